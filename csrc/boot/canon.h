/* Canonical JSON, byte for byte as pyphase.signing.canonical_bytes makes it:
 * json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() */
#ifndef PHASE_BOOT_CANON_H
#define PHASE_BOOT_CANON_H

#include <jansson.h>
#include <stddef.h>

struct phase_buf {
    char *data;
    size_t len, cap, limit;  /* limit: the most bytes the buffer may ever hold */
};

/* Append the canonical form of value, leaving out the top-level key `skip` when value is
 * an object (pass NULL to keep every key). Returns 0, or -1 with a reason in *why
 * (floats, NUL in strings, or output longer than buf->limit). */
int phase_canon(const json_t *value, const char *skip, struct phase_buf *buf, const char **why);

void phase_buf_free(struct phase_buf *buf);

/* Parse a JSON document as the Python side does: duplicates refused, no NUL in strings.
 * Returns NULL with a message in err (size errlen) on failure. */
json_t *phase_json_parse(const char *data, size_t len, char *err, size_t errlen);

#endif
