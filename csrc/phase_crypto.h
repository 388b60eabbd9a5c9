/* Hashing and signature checks shared by the job core and the boot verifier.
 * Thin wrappers over libsodium so that every caller gets the same sizes and
 * the same one-time initialisation; SHA-256 uses the CPU's SHA extensions when it has them (libsodium's is
 * portable C, 5-8x slower on the megabytes a job hashes). */
#ifndef PHASE_CRYPTO_H
#define PHASE_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define PHASE_SHA256_BYTES 32
#define PHASE_ED25519_PUBLICKEY_BYTES 32
#define PHASE_ED25519_SIGNATURE_BYTES 64

#ifdef __cplusplus
extern "C" {
#endif

/* Initialise libsodium once. Returns 0 on success, -1 if libsodium cannot start. */
int phase_crypto_init(void);

/* SHA-256 of buf[0..len) into out: with the CPU's SHA instructions where it has them (x86-64), else libsodium's. */
void phase_sha256(const void *buf, size_t len, uint8_t out[PHASE_SHA256_BYTES]);

/* 1 when phase_sha256 uses the CPU's SHA instructions here, else 0 (for tests and benchmarks). */
int phase_sha256_accelerated(void);

/* "sha256:<64 hex>" of a digest into out (needs 72 bytes: 7 + 64 + NUL). */
#define PHASE_HASH_TEXT_BYTES 72
void phase_hash_text(const uint8_t digest[PHASE_SHA256_BYTES], char out[PHASE_HASH_TEXT_BYTES]);

/* Parse "sha256:<64 hex>" (lower or upper case). Returns 0 on success, -1 if malformed. */
int phase_hash_parse(const char *text, size_t len, uint8_t out[PHASE_SHA256_BYTES]);

/* Detached Ed25519 check. Returns 0 if sig is a valid signature of msg by pk, -1 otherwise. */
int phase_ed25519_verify(const uint8_t sig[PHASE_ED25519_SIGNATURE_BYTES],
                         const uint8_t *msg, size_t msg_len,
                         const uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES]);

#ifdef __cplusplus
}
#endif
#endif
