/* Canonical JSON. Why not json_dumps(JSON_SORT_KEYS|JSON_COMPACT)? Its output differs from
 * Python's json.dumps: jansson writes control characters as \u001F (upper-case hex) where
 * Python writes \u001f, and it can emit reals that Python would format differently. A
 * signature over bytes that are merely "equivalent" fails, so we emit every byte ourselves
 * from the parsed tree (jansson still does the parsing, which is the risky part). */
#include "canon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void phase_buf_free(struct phase_buf *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
}

static int put(struct phase_buf *b, const char *s, size_t n)
{
    if (n > b->limit - b->len)
        return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > b->limit)
            cap = b->limit;
        char *p = realloc(b->data, cap);
        if (!p)
            return -1;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* Python's ESCAPE table with ensure_ascii=False: only '"', '\\' and C0 controls are escaped;
 * \b \f \n \r \t by name, the rest as \u00xx in lower-case hex. DEL and non-ASCII pass as UTF-8. */
static int put_string(struct phase_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (put(b, "\"", 1))
        return -1;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20) {
            u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
            u[4] = hex[c >> 4]; u[5] = hex[c & 15]; u[6] = 0;
            esc = u;
        }
        if (esc) {
            if (put(b, s + i - run, run) || put(b, esc, strlen(esc)))
                return -1;
            run = 0;
        } else {
            run++;
        }
    }
    if (put(b, s + n - run, run))
        return -1;
    return put(b, "\"", 1);
}

static int cmp_keys(const void *a, const void *b)
{
    /* strcmp on UTF-8 orders like Python's str comparison (code point order) */
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int canon(const json_t *v, const char *skip, struct phase_buf *b, const char **why, int depth)
{
    char num[32];
    if (depth > 32) {
        *why = "nested too deeply";
        return -1;
    }
    switch (json_typeof(v)) {
    case JSON_NULL: return put(b, "null", 4);
    case JSON_TRUE: return put(b, "true", 4);
    case JSON_FALSE: return put(b, "false", 5);
    case JSON_REAL:
        *why = "floats are not allowed in signed documents";
        return -1;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return put(b, num, strlen(num));
    case JSON_STRING:
        if (strlen(json_string_value(v)) != json_string_length(v)) {
            *why = "NUL in a string";
            return -1;
        }
        return put_string(b, json_string_value(v), json_string_length(v));
    case JSON_ARRAY: {
        if (put(b, "[", 1))
            return -1;
        for (size_t i = 0; i < json_array_size(v); i++) {
            if ((i && put(b, ",", 1)) || canon(json_array_get(v, i), NULL, b, why, depth + 1))
                return -1;
        }
        return put(b, "]", 1);
    }
    case JSON_OBJECT: {
        size_t n = json_object_size(v), k = 0;
        const char **keys = calloc(n ? n : 1, sizeof *keys);
        const char *key;
        size_t key_len;
        json_t *item;
        int rc = -1;
        if (!keys)
            return -1;
        json_object_keylen_foreach((json_t *)v, key, key_len, item) {
            (void)item;
            if (strlen(key) != key_len) {
                *why = "NUL in an object key";
                free(keys);
                return -1;
            }
            if (skip && strcmp(key, skip) == 0)
                continue;
            keys[k++] = key;
        }
        qsort(keys, k, sizeof *keys, cmp_keys);
        if (put(b, "{", 1))
            goto out;
        for (size_t i = 0; i < k; i++) {
            if ((i && put(b, ",", 1)) || put_string(b, keys[i], strlen(keys[i])) || put(b, ":", 1) ||
                canon(json_object_get(v, keys[i]), NULL, b, why, depth + 1))
                goto out;
        }
        rc = put(b, "}", 1);
    out:
        free(keys);
        return rc;
    }
    }
    *why = "unknown JSON type";
    return -1;
}

int phase_canon(const json_t *value, const char *skip, struct phase_buf *buf, const char **why)
{
    const char *reason = NULL;
    if (canon(value, skip, buf, &reason, 0) == 0)
        return 0;
    *why = reason ? reason : "canonical form too large";
    return -1;
}

json_t *phase_json_parse(const char *data, size_t len, char *err, size_t errlen)
{
    json_error_t e;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &e);
    if (!root)
        snprintf(err, errlen, "not valid JSON: %s (line %d)", e.text, e.line);
    return root;
}
