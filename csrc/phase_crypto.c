#include "phase_crypto.h"

#include <sodium.h>

int phase_crypto_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

void phase_sha256(const void *buf, size_t len, uint8_t out[PHASE_SHA256_BYTES])
{
    crypto_hash_sha256(out, (const unsigned char *)buf, (unsigned long long)len);
}

void phase_hash_text(const uint8_t digest[PHASE_SHA256_BYTES], char out[PHASE_HASH_TEXT_BYTES])
{
    static const char prefix[] = "sha256:";
    for (size_t i = 0; i < sizeof prefix - 1; i++)
        out[i] = prefix[i];
    sodium_bin2hex(out + sizeof prefix - 1, PHASE_HASH_TEXT_BYTES - (sizeof prefix - 1),
                   digest, PHASE_SHA256_BYTES);
}

int phase_hash_parse(const char *text, size_t len, uint8_t out[PHASE_SHA256_BYTES])
{
    size_t bin_len = 0;
    const char *end = NULL;
    if (len != 7 + 2 * PHASE_SHA256_BYTES || sodium_memcmp(text, "sha256:", 7) != 0)
        return -1;
    if (sodium_hex2bin(out, PHASE_SHA256_BYTES, text + 7, len - 7, NULL, &bin_len, &end) != 0)
        return -1;
    return (bin_len == PHASE_SHA256_BYTES && end == text + len) ? 0 : -1;
}

int phase_ed25519_verify(const uint8_t sig[PHASE_ED25519_SIGNATURE_BYTES],
                         const uint8_t *msg, size_t msg_len,
                         const uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES])
{
    return crypto_sign_verify_detached(sig, msg, (unsigned long long)msg_len, pk) == 0 ? 0 : -1;
}
