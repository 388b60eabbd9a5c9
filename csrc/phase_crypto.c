#include "phase_crypto.h"

#include <sodium.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PHASE_SHA_NI 1
#include <cpuid.h>
#include <immintrin.h>
#endif

int phase_crypto_init(void)
{
    return sodium_init() < 0 ? -1 : 0;
}

#ifdef PHASE_SHA_NI
/* SHA-256 with the x86 SHA extensions (Intel since Goldmont/Ice Lake, AMD since Zen): 5-15x libsodium's portable
 * code, which hashes a job's input and output and every module (megabytes per job). Chosen at run time (cpuid), so
 * the build stays the same for every x86-64; libsodium computes the same digest everywhere else. */
static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

__attribute__((target("sha,sse4.1,ssse3"))) static void sha256_ni_blocks(uint32_t state[8], const uint8_t *data,
                                                                        size_t blocks)
{
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
    __m128i cdab = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *) &state[0]), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *) &state[4]), 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    for (; blocks; blocks--, data += 64) {
        __m128i abef_in = abef, cdgh_in = cdgh, w[4];
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            __m128i *x = &w[g & 3];
            if (g < 4) {
                *x = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *) (data + 16 * g)), bswap);
            } else {
                /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four words at a time */
                const __m128i prev = w[(g - 1) & 3], prev2 = w[(g - 2) & 3];
                __m128i t = _mm_sha256msg1_epu32(*x, w[(g - 3) & 3]);
                t = _mm_add_epi32(t, _mm_alignr_epi8(prev, prev2, 4));
                *x = _mm_sha256msg2_epu32(t, prev);
            }
            __m128i msg = _mm_add_epi32(*x, _mm_loadu_si128((const __m128i *) &sha256_k[4 * g]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, msg);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(msg, 0x0E));
        }
        abef = _mm_add_epi32(abef, abef_in);
        cdgh = _mm_add_epi32(cdgh, cdgh_in);
    }
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *) &state[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *) &state[4], _mm_alignr_epi8(dchg, feba, 8));
}

static int sha_ni_usable(void)
{
    static int usable = -1; /* the same answer from every thread: a race only repeats the question */
    int known = __atomic_load_n(&usable, __ATOMIC_RELAXED);
    if (known >= 0)
        return known;
    unsigned a, b, c, d;
    int yes = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_1) && (c & bit_SSSE3)
              && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);
    __atomic_store_n(&usable, yes, __ATOMIC_RELAXED);
    return yes;
}

static void sha256_ni(const uint8_t *p, size_t len, uint8_t out[PHASE_SHA256_BYTES])
{
    uint32_t state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                         0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t whole = len / 64, rest = len % 64;
    sha256_ni_blocks(state, p, whole);
    uint8_t tail[128];
    memset(tail, 0, sizeof tail);
    if (rest)
        memcpy(tail, p + whole * 64, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t) len * 8;
    for (size_t i = 0; i < 8; i++)
        tail[tail_len - 1 - i] = (uint8_t) (bits >> (8 * i));
    sha256_ni_blocks(state, tail, tail_len / 64);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t) (state[i] >> 24);
        out[4 * i + 1] = (uint8_t) (state[i] >> 16);
        out[4 * i + 2] = (uint8_t) (state[i] >> 8);
        out[4 * i + 3] = (uint8_t) state[i];
    }
}
#endif

int phase_sha256_accelerated(void)
{
#ifdef PHASE_SHA_NI
    return sha_ni_usable();
#else
    return 0;
#endif
}

void phase_sha256(const void *buf, size_t len, uint8_t out[PHASE_SHA256_BYTES])
{
#ifdef PHASE_SHA_NI
    if (sha_ni_usable()) {
        sha256_ni((const uint8_t *) buf, len, out);
        return;
    }
#endif
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
