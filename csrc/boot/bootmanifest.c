#include "bootmanifest.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "canon.h"

#define PUBLIC_KEY_HEADER "phase-ed25519-public-v1:"
#define MANIFEST_TYPE "phase-boot-manifest"
#define MAX_INT_VALUE 0x7fffffffffffffffLL

char *phase_read_file(const char *path, size_t max, size_t *len, char *why, size_t whylen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t n = 0;
    if (!buf) {
        close(fd);
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whylen, "cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            snprintf(why, whylen, "%s is larger than %zu bytes", path, max);
            goto fail;
        }
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
fail:
    close(fd);
    free(buf);
    return NULL;
}

int phase_load_public_key(const char *path, uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES], char *why, size_t whylen)
{
    size_t len = 0, bin_len = 0;
    const char *end = NULL;
    char *text = phase_read_file(path, 256, &len, why, whylen);
    if (!text)
        return -1;
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = 0;
    size_t hl = strlen(PUBLIC_KEY_HEADER);
    int rc = -1;
    if (len <= hl || memcmp(text, PUBLIC_KEY_HEADER, hl) != 0) {
        snprintf(why, whylen, "%s is not a Phase release public key", path);
    } else if (sodium_base642bin(pk, PHASE_ED25519_PUBLICKEY_BYTES, text + hl, len - hl, NULL, &bin_len, &end,
                                 sodium_base64_VARIANT_ORIGINAL) != 0 ||
               bin_len != PHASE_ED25519_PUBLICKEY_BYTES || end != text + len) {
        snprintf(why, whylen, "%s holds a malformed public key", path);
    } else {
        rc = 0;
    }
    free(text);
    return rc;
}

int phase_canonical_of(const char *data, size_t len, char **out, size_t *outlen, char *why, size_t whylen)
{
    const char *reason = NULL;
    struct phase_buf buf = {.limit = 1 << 24};
    json_t *root = phase_json_parse(data, len, why, whylen);
    if (!root)
        return -1;
    if (phase_canon(root, json_is_object(root) ? "signature" : NULL, &buf, &reason)) {
        snprintf(why, whylen, "cannot canonicalise: %s", reason);
        json_decref(root);
        phase_buf_free(&buf);
        return -1;
    }
    json_decref(root);
    *out = buf.data;
    *outlen = buf.len;
    return 0;
}

static int get_int(json_t *root, const char *key, long long *out, char *why, size_t whylen)
{
    json_t *v = json_object_get(root, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        snprintf(why, whylen, "%s: must be a non-negative integer", key);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int get_artifact(json_t *root, const char *role, struct phase_artifact *a, char *why, size_t whylen)
{
    json_t *o = json_object_get(root, role), *h, *s;
    if (!json_is_object(o) || json_object_size(o) != 2 || !(h = json_object_get(o, "hash")) ||
        !(s = json_object_get(o, "size"))) {
        snprintf(why, whylen, "%s: must be an object with exactly 'hash' and 'size'", role);
        return -1;
    }
    if (!json_is_string(h) || json_string_length(h) != 71 ||
        phase_hash_parse(json_string_value(h), 71, a->digest) != 0 || !is_lower_hex(json_string_value(h) + 7, 64)) {
        snprintf(why, whylen, "%s.hash: expected 'sha256:' and 64 lower-case hex digits", role);
        return -1;
    }
    memcpy(a->hash, json_string_value(h), 72);
    if (!json_is_integer(s) || json_integer_value(s) < 1 || json_integer_value(s) > PHASE_ARTIFACT_MAX_BYTES) {
        snprintf(why, whylen, "%s.size: must be an integer in 1..%lld", role, (long long)PHASE_ARTIFACT_MAX_BYTES);
        return -1;
    }
    a->size = json_integer_value(s);
    return 0;
}

static int check_schema(json_t *root, struct phase_manifest *m, char *why, size_t whylen)
{
    static const char *const keys[] = {"type", "version", "release", "arch", "created_at", "expires_at",
                                       "kernel", "initramfs", "cmdline", "signature"};
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        size_t i;
        for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (strcmp(key, keys[i]) == 0)
                break;
        if (i == sizeof keys / sizeof keys[0]) {
            snprintf(why, whylen, "unknown field '%.40s'", key);
            return -1;
        }
    }
    for (size_t i = 0; i + 1 < sizeof keys / sizeof keys[0]; i++) {
        if (!json_object_get(root, keys[i])) {
            snprintf(why, whylen, "missing field '%s'", keys[i]);
            return -1;
        }
    }
    v = json_object_get(root, "type");
    if (!json_is_string(v) || strcmp(json_string_value(v), MANIFEST_TYPE) != 0) {
        snprintf(why, whylen, "type: expected '%s'", MANIFEST_TYPE);
        return -1;
    }
    v = json_object_get(root, "version");
    if (!json_is_integer(v) || json_integer_value(v) != 1) {
        snprintf(why, whylen, "version: only format 1 is understood");
        return -1;
    }
    if (get_int(root, "release", &m->release, why, whylen) || get_int(root, "created_at", &m->created_at, why, whylen) ||
        get_int(root, "expires_at", &m->expires_at, why, whylen))
        return -1;
    if (m->expires_at <= m->created_at) {
        snprintf(why, whylen, "expires_at: must be after created_at");
        return -1;
    }
    v = json_object_get(root, "arch");
    if (!json_is_string(v) || (strcmp(json_string_value(v), "x86_64") && strcmp(json_string_value(v), "aarch64"))) {
        snprintf(why, whylen, "arch: must be x86_64 or aarch64");
        return -1;
    }
    snprintf(m->arch, sizeof m->arch, "%s", json_string_value(v));
    if (get_artifact(root, "kernel", &m->kernel, why, whylen) ||
        get_artifact(root, "initramfs", &m->initramfs, why, whylen))
        return -1;
    v = json_object_get(root, "cmdline");
    if (!json_is_string(v) || json_string_length(v) > PHASE_CMDLINE_MAX) {
        snprintf(why, whylen, "cmdline: must be a string of at most %d bytes", PHASE_CMDLINE_MAX);
        return -1;
    }
    const char *c = json_string_value(v);
    for (size_t i = 0; i < json_string_length(v); i++) {
        if ((unsigned char)c[i] < 0x20 || (unsigned char)c[i] > 0x7e) {
            snprintf(why, whylen, "cmdline: only printable ASCII is allowed");
            return -1;
        }
    }
    memcpy(m->cmdline, c, json_string_length(v) + 1);
    return 0;
}

int phase_manifest_verify(const char *data, size_t len, const uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES],
                          long long now, long long min_release, struct phase_manifest *out,
                          char *why, size_t whylen)
{
    uint8_t sig[PHASE_ED25519_SIGNATURE_BYTES];
    size_t sig_len = 0;
    const char *end = NULL, *reason = NULL;
    struct phase_buf canon = {.limit = PHASE_MANIFEST_MAX_BYTES * 6};
    int rc = -1;

    if (len > PHASE_MANIFEST_MAX_BYTES) {
        snprintf(why, whylen, "manifest is larger than %d bytes", PHASE_MANIFEST_MAX_BYTES);
        return -1;
    }
    json_t *root = phase_json_parse(data, len, why, whylen);
    if (!root)
        return -1;
    if (!json_is_object(root)) {
        snprintf(why, whylen, "manifest is not a JSON object");
        goto out;
    }
    json_t *s = json_object_get(root, "signature");
    if (!json_is_string(s)) {
        snprintf(why, whylen, "bad signature: manifest has no signature");
        goto out;
    }
    if (sodium_base642bin(sig, sizeof sig, json_string_value(s), json_string_length(s), NULL, &sig_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        sig_len != sizeof sig || end != json_string_value(s) + json_string_length(s)) {
        snprintf(why, whylen, "bad signature: not 64 bytes of base64");
        goto out;
    }
    if (phase_canon(root, "signature", &canon, &reason)) {
        snprintf(why, whylen, "bad signature: manifest cannot be canonicalised (%s)", reason);
        goto out;
    }
    /* The signature is checked before any field is trusted or even looked at. */
    if (phase_ed25519_verify(sig, (const uint8_t *)canon.data, canon.len, pk) != 0) {
        snprintf(why, whylen, "bad signature: does not verify against the release key");
        goto out;
    }
    if (check_schema(root, out, why, whylen))
        goto out;
    if (now >= out->expires_at) {
        snprintf(why, whylen, "expired: manifest expired at %lld, clock says %lld", out->expires_at, now);
        goto out;
    }
    if (out->release < min_release) {
        snprintf(why, whylen, "rollback: release %lld is below the floor %lld", out->release, min_release);
        goto out;
    }
    rc = 0;
out:
    phase_buf_free(&canon);
    json_decref(root);
    return rc;
}
