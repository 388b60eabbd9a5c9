/* Boot manifests, checked as pyphase/boot/manifest.py checks them (keep the two in step). */
#ifndef PHASE_BOOT_MANIFEST_H
#define PHASE_BOOT_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "../phase_crypto.h"

#define PHASE_MANIFEST_MAX_BYTES (16 * 1024)
#define PHASE_CMDLINE_MAX 1024
#define PHASE_ARTIFACT_MAX_BYTES (1LL << 31)

struct phase_artifact {
    char hash[PHASE_HASH_TEXT_BYTES];      /* "sha256:<hex>" */
    uint8_t digest[PHASE_SHA256_BYTES];
    long long size;
};

struct phase_manifest {
    long long release, created_at, expires_at;
    char arch[16];
    struct phase_artifact kernel, initramfs;
    char cmdline[PHASE_CMDLINE_MAX + 1];
};

/* Read a release public key file ("phase-ed25519-public-v1:<base64>"). 0 or -1 with why. */
int phase_load_public_key(const char *path, uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES], char *why, size_t whylen);

/* Verify signature, schema, expiry (against now) and release floor of the manifest bytes.
 * Returns 0 and fills *out, or -1 with one line in why. */
int phase_manifest_verify(const char *data, size_t len, const uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES],
                          long long now, long long min_release, struct phase_manifest *out,
                          char *why, size_t whylen);

/* Read a whole file of at most max bytes into a malloc'd buffer. */
char *phase_read_file(const char *path, size_t max, size_t *len, char *why, size_t whylen);

/* Canonical bytes of a JSON document minus its "signature" (for tests against Python). */
int phase_canonical_of(const char *data, size_t len, char **out, size_t *outlen, char *why, size_t whylen);

#endif
