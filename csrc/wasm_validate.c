/* WebAssembly module validator (see wasm_validate.h).
 *
 * Structure: one pass over the sections in order; function bodies are validated as they are met in the code
 * section with the algorithm of the spec's validation appendix (operand stack + control stack, polymorphic
 * "unknown" values after unreachable code), using explicit, capped stacks. All reads go through the rd_* helpers,
 * which check bounds; sizes are computed in 64-bit. Every allocation is freed at the single exit of
 * phase_wasm_validate().
 */
#include "wasm_validate.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------------------ */
/* value types */
enum { T_ANY = 0, T_I32 = 0x7F, T_I64 = 0x7E, T_F32 = 0x7D, T_F64 = 0x7C };

static const uint8_t k_single[4] = { T_I32, T_I64, T_F32, T_F64 };

static const char *tname(uint8_t t)
{
    switch (t) {
    case T_I32: return "i32";
    case T_I64: return "i64";
    case T_F32: return "f32";
    case T_F64: return "f64";
    case T_ANY: return "_";
    default: return "?";
    }
}

static const uint8_t *single_type(uint8_t t)
{
    switch (t) {
    case T_I32: return &k_single[0];
    case T_I64: return &k_single[1];
    case T_F32: return &k_single[2];
    default:    return &k_single[3];
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* validator state */

typedef struct { uint32_t off, np, nr; } functype;   /* params then results at typebuf[off] */

typedef struct {
    const uint8_t *params, *results;
    uint32_t np, nr;
    uint32_t height;        /* operand stack height at entry (after params pushed: height excludes params) */
    uint8_t  op;            /* 0x02 block, 0x03 loop, 0x04 if, 0x05 else, 0 function */
    uint8_t  unreachable;
} ctrl;

typedef struct { uint64_t end; uint8_t type; } localrun;   /* locals [prev.end, end) have type */

typedef struct {
    const uint8_t *base;
    size_t len;
    phase_wasm_caps caps;
    char *err;
    size_t errlen;

    /* where we are, for messages */
    const char *section;    /* section name or NULL */
    int in_func;
    uint32_t func_index;

    /* module */
    uint32_t ntypes;
    functype *types;
    uint8_t *typebuf;
    uint32_t max_arity;     /* max over types of np + nr */

    uint32_t nfunc_imports, nfuncs;  /* nfuncs = imports + defined */
    uint32_t *func_types;            /* type index per function (imports first) */
    uint32_t ndefined_declared;      /* function section count */
    int seen_func_section;

    uint32_t ntables;
    uint32_t nmems;
    uint32_t nglobals;
    uint8_t *global_types;
    uint8_t *global_mut;

    int has_datacount;
    uint32_t datacount;
    uint32_t ncode;

    phase_wasm_info info;

    /* function-body scratch, reused */
    uint8_t *vals; size_t vals_cap; size_t sp;
    ctrl *ctrls; size_t ctrls_cap; size_t csp;
    localrun *locals; size_t locals_cap; size_t nlocalruns;
    uint64_t nlocals;
    uint8_t *flat;          /* locals expanded to one type byte each, when few enough; else NULL (binary search) */
    uint8_t *flatbuf; size_t flat_cap;
    char *sigbuf;

    uint64_t work, work_limit;
} V;

/* ------------------------------------------------------------------------------------------------------------ */
/* errors */

static int vfail(V *v, size_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int vfail(V *v, size_t off, const char *fmt, ...)
{
    if (!v->err || v->errlen == 0) return -1;
    int n;
    if (v->in_func)
        n = snprintf(v->err, v->errlen, "function %u at offset 0x%zx: ", v->func_index, off);
    else if (v->section)
        n = snprintf(v->err, v->errlen, "%s section at offset 0x%zx: ", v->section, off);
    else
        n = snprintf(v->err, v->errlen, "at offset 0x%zx: ", off);
    if (n < 0) n = 0;
    if ((size_t)n < v->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(v->err + n, v->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

#define TRY(x) do { if ((x) != 0) return -1; } while (0)

/* ------------------------------------------------------------------------------------------------------------ */
/* reader */

typedef struct { const uint8_t *p, *end; } rd;

static size_t OFF(V *v, const uint8_t *p) { return (size_t)(p - v->base); }

static int rd_eof(V *v, rd *r, const char *what)
{
    return vfail(v, OFF(v, r->p), "unexpected end of %s", what);
}

static int rd_u8(V *v, rd *r, uint8_t *out, const char *what)
{
    *out = 0;
    if (r->p >= r->end) return rd_eof(v, r, what);
    *out = *r->p++;
    return 0;
}

static int rd_bytes(V *v, rd *r, size_t n, const uint8_t **out, const char *what)
{
    if ((size_t)(r->end - r->p) < n) return rd_eof(v, r, what);
    *out = r->p;
    r->p += n;
    return 0;
}

/* unsigned 32-bit LEB128 */
static int rd_u32_slow(V *v, rd *r, uint32_t *out, const char *what)
{
    *out = 0;
    const uint8_t *start = r->p;
    uint32_t result = 0;
    for (unsigned i = 0; i < 5; i++) {
        if (r->p >= r->end) return rd_eof(v, r, what);
        uint8_t b = *r->p++;
        if (i == 4) {
            if (b & 0x80) return vfail(v, OFF(v, start), "integer representation too long (%s)", what);
            if (b & 0x70) return vfail(v, OFF(v, start), "integer too large (%s)", what);
        }
        result |= (uint32_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) { *out = result; return 0; }
    }
    return vfail(v, OFF(v, start), "integer representation too long (%s)", what); /* unreachable */
}

static inline __attribute__((always_inline)) int rd_u32(V *v, rd *r, uint32_t *out, const char *what)
{
    if (__builtin_expect(r->p < r->end && !(*r->p & 0x80), 1)) { *out = *r->p++; return 0; }
    return rd_u32_slow(v, r, out, what);
}

static int rd_s32_slow(V *v, rd *r, int32_t *out, const char *what);

static inline __attribute__((always_inline)) int rd_s32(V *v, rd *r, int32_t *out, const char *what)
{
    if (__builtin_expect(r->p < r->end && !(*r->p & 0x80), 1)) {
        uint8_t b = *r->p++;
        *out = (b & 0x40) ? (int32_t)b - 128 : (int32_t)b;
        return 0;
    }
    return rd_s32_slow(v, r, out, what);
}

static int rd_s32_slow(V *v, rd *r, int32_t *out, const char *what)
{
    *out = 0;
    const uint8_t *start = r->p;
    uint32_t result = 0;
    for (unsigned i = 0; i < 5; i++) {
        if (r->p >= r->end) return rd_eof(v, r, what);
        uint8_t b = *r->p++;
        if (i == 4) {
            if (b & 0x80) return vfail(v, OFF(v, start), "integer representation too long (%s)", what);
            /* bits 4..6 must be the sign extension of bit 3 */
            uint8_t hi = b & 0x70;
            if (hi != ((b & 0x08) ? 0x70 : 0x00))
                return vfail(v, OFF(v, start), "integer too large (%s)", what);
        }
        result |= (uint32_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            unsigned shift = 7 * (i + 1);
            if (shift < 32 && (b & 0x40)) result |= ~(uint32_t)0 << shift;
            *out = (int32_t)result;
            return 0;
        }
    }
    return vfail(v, OFF(v, start), "integer representation too long (%s)", what);
}

static int rd_s64_slow(V *v, rd *r, int64_t *out, const char *what);

static inline __attribute__((always_inline)) int rd_s64(V *v, rd *r, int64_t *out, const char *what)
{
    if (__builtin_expect(r->p < r->end && !(*r->p & 0x80), 1)) {
        uint8_t b = *r->p++;
        *out = (b & 0x40) ? (int64_t)b - 128 : (int64_t)b;
        return 0;
    }
    return rd_s64_slow(v, r, out, what);
}

static int rd_s64_slow(V *v, rd *r, int64_t *out, const char *what)
{
    *out = 0;
    const uint8_t *start = r->p;
    uint64_t result = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (r->p >= r->end) return rd_eof(v, r, what);
        uint8_t b = *r->p++;
        if (i == 9) {
            if (b & 0x80) return vfail(v, OFF(v, start), "integer representation too long (%s)", what);
            uint8_t hi = b & 0x7E;  /* bits 1..6 must extend bit 0 */
            if (hi != ((b & 0x01) ? 0x7E : 0x00))
                return vfail(v, OFF(v, start), "integer too large (%s)", what);
        }
        result |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            unsigned shift = 7 * (i + 1);
            if (shift < 64 && (b & 0x40)) result |= ~(uint64_t)0 << shift;
            *out = (int64_t)result;
            return 0;
        }
    }
    return vfail(v, OFF(v, start), "integer representation too long (%s)", what);
}

/* signed 33-bit LEB (block type index); returns value in int64 */
static int rd_s33(V *v, rd *r, int64_t *out, const char *what)
{
    *out = 0;
    const uint8_t *start = r->p;
    uint64_t result = 0;
    for (unsigned i = 0; i < 5; i++) {
        if (r->p >= r->end) return rd_eof(v, r, what);
        uint8_t b = *r->p++;
        if (i == 4) {
            if (b & 0x80) return vfail(v, OFF(v, start), "integer representation too long (%s)", what);
            uint8_t hi = b & 0x60;  /* bits 5..6 must extend bit 4 (bit 32 of the value) */
            if (hi != ((b & 0x10) ? 0x60 : 0x00))
                return vfail(v, OFF(v, start), "integer too large (%s)", what);
        }
        result |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            unsigned shift = 7 * (i + 1);
            if (b & 0x40) result |= ~(uint64_t)0 << shift;
            *out = (int64_t)result;
            return 0;
        }
    }
    return vfail(v, OFF(v, start), "integer representation too long (%s)", what);
}

/* a vector count, checked against a cap and against the bytes left (each element needs >= min_elem bytes) */
static int rd_count(V *v, rd *r, uint32_t *out, uint32_t cap, unsigned min_elem, const char *what)
{
    const uint8_t *start = r->p;
    TRY(rd_u32(v, r, out, what));
    if (*out > cap)
        return vfail(v, OFF(v, start), "too many %s: %u (limit %u)", what, *out, cap);
    if ((uint64_t)*out * min_elem > (uint64_t)(r->end - r->p))
        return vfail(v, OFF(v, start), "%s count %u exceeds the remaining %zu bytes (unexpected end)", what, *out,
                     (size_t)(r->end - r->p));
    return 0;
}

static int utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; }
        else return 0;
        if (n - i <= need) return 0;
        for (size_t k = 1; k <= need; k++) {
            uint8_t cc = s[i + k];
            if ((cc & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
        if (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
        i += need + 1;
    }
    return 1;
}

static int rd_name(V *v, rd *r, const uint8_t **s, uint32_t *n, const char *what)
{
    const uint8_t *start = r->p;
    TRY(rd_u32(v, r, n, what));
    if ((size_t)(r->end - r->p) < *n) return vfail(v, OFF(v, start), "unexpected end of %s (length %u)", what, *n);
    *s = r->p;
    r->p += *n;
    if (!utf8_valid(*s, *n)) return vfail(v, OFF(v, start), "malformed UTF-8 encoding in %s", what);
    return 0;
}

/* a name for an error message: printable ASCII kept, anything else as \xNN, at most 48 input bytes */
static const char *printable(char *out, size_t outlen, const uint8_t *s, uint32_t n)
{
    size_t k = 0;
    uint32_t lim = n > 48 ? 48 : n;
    for (uint32_t i = 0; i < lim && k + 5 < outlen; i++) {
        uint8_t c = s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') out[k++] = (char)c;
        else k += (size_t)snprintf(out + k, outlen - k, "\\x%02x", c);
    }
    if (n > lim && k + 4 < outlen) { memcpy(out + k, "...", 3); k += 3; }
    out[k] = 0;
    return out;
}

/* value type byte */
static int rd_valtype(V *v, rd *r, uint8_t *t, const char *what)
{
    const uint8_t *start = r->p;
    TRY(rd_u8(v, r, t, what));
    switch (*t) {
    case T_I32: case T_I64: case T_F32: case T_F64: return 0;
    case 0x7B: return vfail(v, OFF(v, start), "unsupported: SIMD value type v128 in %s", what);
    case 0x70: case 0x6F:
        return vfail(v, OFF(v, start), "unsupported: reference type 0x%02x in %s (reference types)", *t, what);
    default: return vfail(v, OFF(v, start), "malformed value type 0x%02x in %s", *t, what);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* helpers */

static void *xcalloc(size_t n, size_t sz)
{
    if (n == 0) n = 1;
    return calloc(n, sz);
}

static int grow(V *v, void **buf, size_t *cap, size_t need, size_t elsz, size_t limit, size_t off, const char *what)
{
    if (need <= *cap) return 0;
    if (need > limit) return vfail(v, off, "%s exceeds the limit of %zu", what, limit);
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need) ncap = ncap * 2;
    if (ncap > limit) ncap = limit;
    void *nb = realloc(*buf, ncap * elsz);
    if (!nb) return vfail(v, off, "out of memory (%s)", what);
    *buf = nb;
    *cap = ncap;
    return 0;
}

static void type_sig(V *v, uint32_t ti, char *out)
{
    const functype *ft = &v->types[ti];
    const uint8_t *p = v->typebuf + ft->off;
    size_t k = 0;
    if (ft->nr == 0) out[k++] = 'v';
    for (uint32_t i = 0; i < ft->nr; i++) {
        uint8_t t = p[ft->np + i];
        out[k++] = t == T_I32 ? 'i' : t == T_I64 ? 'I' : t == T_F32 ? 'f' : 'F';
    }
    out[k++] = '(';
    for (uint32_t i = 0; i < ft->np; i++) {
        uint8_t t = p[i];
        out[k++] = t == T_I32 ? 'i' : t == T_I64 ? 'I' : t == T_F32 ? 'f' : 'F';
    }
    out[k++] = ')';
    out[k] = 0;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* sections */

static int sec_type(V *v, rd *r)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, v->caps.max_types, 3, "types"));
    v->ntypes = n;
    v->types = xcalloc(n, sizeof(functype));
    v->typebuf = xcalloc((size_t)(r->end - r->p), 1);
    if (!v->types || !v->typebuf) return vfail(v, OFF(v, r->p), "out of memory");
    uint32_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p;
        uint8_t form;
        TRY(rd_u8(v, r, &form, "type"));
        if (form != 0x60) {
            if (form == 0x5E || form == 0x5F || form == 0x50 || form == 0x4E || form == 0x4F)
                return vfail(v, OFF(v, at), "unsupported: type %u: GC type form 0x%02x", i, form);
            return vfail(v, OFF(v, at), "type %u: malformed function type form 0x%02x (expected 0x60)", i, form);
        }
        uint32_t np, nr;
        const uint8_t *cp = r->p;
        TRY(rd_count(v, r, &np, UINT32_MAX, 1, "parameters"));
        if (np > v->caps.max_params)
            return vfail(v, OFF(v, cp), "type %u has %u parameters (limit %u)", i, np, v->caps.max_params);
        v->types[i].off = used;
        v->types[i].np = np;
        for (uint32_t k = 0; k < np; k++) TRY(rd_valtype(v, r, &v->typebuf[used++], "parameter type"));
        cp = r->p;
        TRY(rd_count(v, r, &nr, UINT32_MAX, 1, "results"));
        if (nr > v->caps.max_results)
            return vfail(v, OFF(v, cp), "type %u has %u results (limit %u)", i, nr, v->caps.max_results);
        v->types[i].nr = nr;
        for (uint32_t k = 0; k < nr; k++) TRY(rd_valtype(v, r, &v->typebuf[used++], "result type"));
        if (np + nr > v->max_arity) v->max_arity = np + nr;
    }
    v->info.num_types = n;
    return 0;
}

static int rd_limits(V *v, rd *r, int is_mem, uint32_t *min, int *has_max, uint32_t *max)
{
    const uint8_t *at = r->p;
    uint8_t flags;
    TRY(rd_u8(v, r, &flags, "limits"));
    if (is_mem) {
        if (flags == 2 || flags == 3) return vfail(v, OFF(v, at), "unsupported: shared memory (threads)");
        if (flags >= 4 && flags <= 7) return vfail(v, OFF(v, at), "unsupported: 64-bit memory (memory64)");
    }
    if (flags > 1) return vfail(v, OFF(v, at), "malformed limits flags 0x%02x (integer too large)", flags);
    TRY(rd_u32(v, r, min, "limits minimum"));
    *has_max = flags == 1;
    *max = 0;
    if (*has_max) TRY(rd_u32(v, r, max, "limits maximum"));
    if (is_mem) {
        if (*min > 65536) return vfail(v, OFF(v, at), "memory size must be at most 65536 pages (4GiB), got %u", *min);
        if (*has_max && *max > 65536)
            return vfail(v, OFF(v, at), "memory size must be at most 65536 pages (4GiB), maximum %u", *max);
    }
    if (*has_max && *min > *max)
        return vfail(v, OFF(v, at), "size minimum %u must not be greater than maximum %u", *min, *max);
    return 0;
}

static int sec_import(V *v, rd *r, phase_wasm_import_check check, void *cbctx)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, v->caps.max_imports, 4, "imports"));
    if (n > v->caps.max_functions) return vfail(v, OFF(v, r->p), "too many imports: %u (limit %u)", n, v->caps.max_functions);
    v->func_types = xcalloc(n, sizeof(uint32_t));   /* grown when the function section arrives */
    v->sigbuf = malloc((size_t)v->max_arity + 8);
    if (!v->func_types || !v->sigbuf) return vfail(v, OFF(v, r->p), "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p, *mod, *nm;
        uint32_t modlen, nmlen;
        uint8_t kind;
        TRY(rd_name(v, r, &mod, &modlen, "import module name"));
        TRY(rd_name(v, r, &nm, &nmlen, "import name"));
        TRY(rd_u8(v, r, &kind, "import kind"));
        switch (kind) {
        case 0: {
            uint32_t ti;
            const uint8_t *tp = r->p;
            TRY(rd_u32(v, r, &ti, "import type index"));
            if (ti >= v->ntypes) return vfail(v, OFF(v, tp), "import %u: unknown type %u", i, ti);
            v->func_types[v->nfuncs++] = ti;
            v->nfunc_imports++;
            if (check) {
                char msg[256];
                msg[0] = 0;
                type_sig(v, ti, v->sigbuf);
                if (check(cbctx, (const char *)mod, modlen, (const char *)nm, nmlen, v->sigbuf, msg, sizeof msg)) {
                    msg[sizeof msg - 1] = 0;
                    char pm[200], pn[200];
                    return vfail(v, OFF(v, at), "import %u (\"%s\".\"%s\" %s) rejected: %s", i,
                                 printable(pm, sizeof pm, mod, modlen), printable(pn, sizeof pn, nm, nmlen), v->sigbuf,
                                 msg[0] ? msg : "not allowed");
                }
            }
            break;
        }
        case 1: return vfail(v, OFF(v, at), "unsupported: import %u: table imports (only functions may be imported)", i);
        case 2: return vfail(v, OFF(v, at), "unsupported: import %u: memory imports (only functions may be imported)", i);
        case 3: return vfail(v, OFF(v, at), "unsupported: import %u: global imports (only functions may be imported)", i);
        case 4: return vfail(v, OFF(v, at), "unsupported: import %u: tag imports (exceptions)", i);
        default: return vfail(v, OFF(v, at), "import %u: malformed import kind 0x%02x", i, kind);
        }
    }
    v->info.num_imported_functions = v->nfunc_imports;
    return 0;
}

static int sec_function(V *v, rd *r)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, v->caps.max_functions, 1, "functions"));
    if ((uint64_t)n + v->nfuncs > v->caps.max_functions)
        return vfail(v, OFF(v, r->p), "too many functions: %u imported + %u defined (limit %u)", v->nfuncs, n,
                     v->caps.max_functions);
    uint32_t *nf = realloc(v->func_types, ((size_t)v->nfuncs + n + 1) * sizeof(uint32_t));
    if (!nf) return vfail(v, OFF(v, r->p), "out of memory");
    v->func_types = nf;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p;
        uint32_t ti;
        TRY(rd_u32(v, r, &ti, "function type index"));
        if (ti >= v->ntypes) return vfail(v, OFF(v, at), "function %u: unknown type %u", v->nfuncs, ti);
        v->func_types[v->nfuncs++] = ti;
    }
    v->ndefined_declared = n;
    v->seen_func_section = 1;
    v->info.num_defined_functions = n;
    return 0;
}

static int sec_table(V *v, rd *r)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, UINT32_MAX, 2, "tables"));
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p;
        uint8_t et;
        TRY(rd_u8(v, r, &et, "table element type"));
        if (et == 0x6F) return vfail(v, OFF(v, at), "unsupported: externref table (reference types)");
        if (et != 0x70) return vfail(v, OFF(v, at), "malformed table element type 0x%02x", et);
        uint32_t min, max;
        int has_max;
        TRY(rd_limits(v, r, 0, &min, &has_max, &max));
        if (v->ntables + i >= 1) return vfail(v, OFF(v, at), "unsupported: multiple tables");
        if (min > v->caps.max_table_size)
            return vfail(v, OFF(v, at), "table initial size %u exceeds the limit of %u", min, v->caps.max_table_size);
        v->info.has_table = 1;
        v->info.table_initial = min;
        v->info.table_has_max = has_max;
        v->info.table_max = max;
    }
    v->ntables += n;
    return 0;
}

static int sec_memory(V *v, rd *r)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, UINT32_MAX, 2, "memories"));
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p;
        uint32_t min, max;
        int has_max;
        TRY(rd_limits(v, r, 1, &min, &has_max, &max));
        if (v->nmems + i >= 1) return vfail(v, OFF(v, at), "unsupported: multiple memories");
        v->info.has_memory = 1;
        v->info.mem_initial_pages = min;
        v->info.mem_has_max = has_max;
        v->info.mem_max_pages = max;
    }
    v->nmems += n;
    return 0;
}

/* constant expression: exactly one constant instruction (or global.get of an imported global, of which there are
 * none since global imports are rejected) followed by end. */
static int const_expr(V *v, rd *r, uint8_t want, const char *what)
{
    const uint8_t *at = r->p;
    uint8_t op, got = 0;
    TRY(rd_u8(v, r, &op, what));
    switch (op) {
    case 0x41: { int32_t x; TRY(rd_s32(v, r, &x, "i32 constant")); got = T_I32; break; }
    case 0x42: { int64_t x; TRY(rd_s64(v, r, &x, "i64 constant")); got = T_I64; break; }
    case 0x43: { const uint8_t *b; TRY(rd_bytes(v, r, 4, &b, "f32 constant")); got = T_F32; break; }
    case 0x44: { const uint8_t *b; TRY(rd_bytes(v, r, 8, &b, "f64 constant")); got = T_F64; break; }
    case 0x23: {
        uint32_t gi;
        TRY(rd_u32(v, r, &gi, "global index"));
        /* only imported globals may be read in constant expressions; global imports are not supported */
        return vfail(v, OFF(v, at), "unknown global %u in %s (constant expressions may only read imported globals)",
                     gi, what);
    }
    case 0x0B: return vfail(v, OFF(v, at), "type mismatch: empty %s, expected [%s]", what, tname(want));
    case 0xD0: case 0xD2: return vfail(v, OFF(v, at), "unsupported: ref.null/ref.func in %s (reference types)", what);
    case 0xFD: return vfail(v, OFF(v, at), "unsupported: SIMD constant in %s", what);
    default:
        return vfail(v, OFF(v, at), "constant expression required in %s (opcode 0x%02x)", what, op);
    }
    if (got != want) return vfail(v, OFF(v, at), "type mismatch: %s must be [%s], got [%s]", what, tname(want), tname(got));
    const uint8_t *e = r->p;
    TRY(rd_u8(v, r, &op, what));
    if (op != 0x0B) {
        if (op == 0x41 || op == 0x42 || op == 0x43 || op == 0x44 || op == 0x23)
            return vfail(v, OFF(v, e), "type mismatch: %s must be a single constant", what);
        return vfail(v, OFF(v, e), "constant expression required in %s (opcode 0x%02x after the constant)", what, op);
    }
    return 0;
}

static int sec_global(V *v, rd *r)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, v->caps.max_globals, 3, "globals"));
    v->global_types = xcalloc(n, 1);
    v->global_mut = xcalloc(n, 1);
    if (!v->global_types || !v->global_mut) return vfail(v, OFF(v, r->p), "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at;
        uint8_t t, m;
        TRY(rd_valtype(v, r, &t, "global type"));
        at = r->p;
        TRY(rd_u8(v, r, &m, "global mutability"));
        if (m > 1) return vfail(v, OFF(v, at), "global %u: malformed mutability 0x%02x", i, m);
        TRY(const_expr(v, r, t, "global initializer"));
        v->global_types[i] = t;
        v->global_mut[i] = m;
    }
    v->nglobals = n;
    v->info.num_globals = n;
    return 0;
}

typedef struct { const uint8_t *s; uint32_t n; uint32_t off; } expname;

static int cmp_name(const void *a, const void *b)
{
    const expname *x = a, *y = b;
    uint32_t m = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, m);
    if (c) return c;
    return x->n < y->n ? -1 : x->n > y->n ? 1 : 0;
}

static int sec_export(V *v, rd *r)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, v->caps.max_exports, 3, "exports"));
    expname *names = xcalloc(n, sizeof(expname));
    if (!names) return vfail(v, OFF(v, r->p), "out of memory");
    int rc = -1;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p, *kp;
        uint8_t kind;
        uint32_t idx;
        if (rd_name(v, r, &names[i].s, &names[i].n, "export name")) goto out;
        names[i].off = (uint32_t)OFF(v, at);
        kp = r->p;
        if (rd_u8(v, r, &kind, "export kind")) goto out;
        if (rd_u32(v, r, &idx, "export index")) goto out;
        switch (kind) {
        case 0: if (idx >= v->nfuncs) { vfail(v, OFF(v, kp), "export %u: unknown function %u", i, idx); goto out; } break;
        case 1: if (idx >= v->ntables) { vfail(v, OFF(v, kp), "export %u: unknown table %u", i, idx); goto out; } break;
        case 2: if (idx >= v->nmems) { vfail(v, OFF(v, kp), "export %u: unknown memory %u", i, idx); goto out; } break;
        case 3: if (idx >= v->nglobals) { vfail(v, OFF(v, kp), "export %u: unknown global %u", i, idx); goto out; } break;
        default: vfail(v, OFF(v, kp), "export %u: malformed export kind 0x%02x", i, kind); goto out;
        }
    }
    if (n > 1) {
        qsort(names, n, sizeof(expname), cmp_name);
        for (uint32_t i = 1; i < n; i++)
            if (cmp_name(&names[i - 1], &names[i]) == 0) {
                uint32_t o = names[i - 1].off > names[i].off ? names[i - 1].off : names[i].off;
                char pn[200];
                vfail(v, o, "duplicate export name \"%s\"", printable(pn, sizeof pn, names[i].s, names[i].n));
                goto out;
            }
    }
    v->info.num_exports = n;
    rc = 0;
out:
    free(names);
    return rc;
}

static int sec_start(V *v, rd *r)
{
    const uint8_t *at = r->p;
    uint32_t fi;
    TRY(rd_u32(v, r, &fi, "start function index"));
    if (fi >= v->nfuncs) return vfail(v, OFF(v, at), "unknown function %u", fi);
    const functype *ft = &v->types[v->func_types[fi]];
    if (ft->np || ft->nr)
        return vfail(v, OFF(v, at), "start function %u must have type [] -> [], has %u params and %u results", fi,
                     ft->np, ft->nr);
    v->info.has_start = 1;
    v->info.start_function = fi;
    return 0;
}

static int sec_element(V *v, rd *r)
{
    uint32_t n;
    TRY(rd_count(v, r, &n, v->caps.max_elem_segments, 1, "element segments"));
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p;
        uint32_t flags;
        TRY(rd_u32(v, r, &flags, "element segment flags"));
        if (flags != 0) {
            if (flags <= 7)
                return vfail(v, OFF(v, at), "unsupported: element segment %u kind %u (bulk memory/reference types "
                             "element segments; only active segments for table 0 are supported)", i, flags);
            return vfail(v, OFF(v, at), "element segment %u: malformed flags %u", i, flags);
        }
        if (v->ntables == 0) return vfail(v, OFF(v, at), "element segment %u: unknown table 0", i);
        TRY(const_expr(v, r, T_I32, "element segment offset"));
        uint32_t k;
        TRY(rd_count(v, r, &k, UINT32_MAX, 1, "element segment functions"));
        for (uint32_t j = 0; j < k; j++) {
            const uint8_t *fp = r->p;
            uint32_t fi;
            TRY(rd_u32(v, r, &fi, "element function index"));
            if (fi >= v->nfuncs) return vfail(v, OFF(v, fp), "element segment %u: unknown function %u", i, fi);
        }
    }
    v->info.num_elem_segments = n;
    return 0;
}

static int sec_datacount(V *v, rd *r)
{
    TRY(rd_u32(v, r, &v->datacount, "data count"));
    v->has_datacount = 1;
    return 0;
}

static int sec_data(V *v, rd *r)
{
    uint32_t n;
    const uint8_t *at0 = r->p;
    TRY(rd_count(v, r, &n, v->caps.max_data_segments, 1, "data segments"));
    if (v->has_datacount && v->datacount != n)
        return vfail(v, OFF(v, at0), "data count (%u) and data section have inconsistent lengths (%u)", v->datacount, n);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p;
        uint32_t flags;
        TRY(rd_u32(v, r, &flags, "data segment flags"));
        if (flags == 1 || flags == 2)
            return vfail(v, OFF(v, at), "unsupported: data segment %u kind %u (passive/explicit-memory segments, bulk memory)",
                         i, flags);
        if (flags != 0) return vfail(v, OFF(v, at), "data segment %u: malformed flags %u", i, flags);
        if (v->nmems == 0) return vfail(v, OFF(v, at), "data segment %u: unknown memory 0", i);
        TRY(const_expr(v, r, T_I32, "data segment offset"));
        uint32_t k;
        const uint8_t *b;
        TRY(rd_u32(v, r, &k, "data segment size"));
        TRY(rd_bytes(v, r, k, &b, "data segment bytes"));
    }
    v->info.num_data_segments = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* function bodies */

static const char *const k_opnames[256] = {
    [0x00] = "unreachable", [0x01] = "nop", [0x02] = "block", [0x03] = "loop", [0x04] = "if", [0x05] = "else",
    [0x0B] = "end", [0x0C] = "br", [0x0D] = "br_if", [0x0E] = "br_table", [0x0F] = "return", [0x10] = "call",
    [0x11] = "call_indirect", [0x1A] = "drop", [0x1B] = "select", [0x20] = "local.get", [0x21] = "local.set",
    [0x22] = "local.tee", [0x23] = "global.get", [0x24] = "global.set",
    [0x28] = "i32.load", [0x29] = "i64.load", [0x2A] = "f32.load", [0x2B] = "f64.load", [0x2C] = "i32.load8_s",
    [0x2D] = "i32.load8_u", [0x2E] = "i32.load16_s", [0x2F] = "i32.load16_u", [0x30] = "i64.load8_s",
    [0x31] = "i64.load8_u", [0x32] = "i64.load16_s", [0x33] = "i64.load16_u", [0x34] = "i64.load32_s",
    [0x35] = "i64.load32_u", [0x36] = "i32.store", [0x37] = "i64.store", [0x38] = "f32.store", [0x39] = "f64.store",
    [0x3A] = "i32.store8", [0x3B] = "i32.store16", [0x3C] = "i64.store8", [0x3D] = "i64.store16",
    [0x3E] = "i64.store32", [0x3F] = "memory.size", [0x40] = "memory.grow", [0x41] = "i32.const",
    [0x42] = "i64.const", [0x43] = "f32.const", [0x44] = "f64.const",
    [0x45] = "i32.eqz", [0x46] = "i32.eq", [0x47] = "i32.ne", [0x48] = "i32.lt_s", [0x49] = "i32.lt_u",
    [0x4A] = "i32.gt_s", [0x4B] = "i32.gt_u", [0x4C] = "i32.le_s", [0x4D] = "i32.le_u", [0x4E] = "i32.ge_s",
    [0x4F] = "i32.ge_u", [0x50] = "i64.eqz", [0x51] = "i64.eq", [0x52] = "i64.ne", [0x53] = "i64.lt_s",
    [0x54] = "i64.lt_u", [0x55] = "i64.gt_s", [0x56] = "i64.gt_u", [0x57] = "i64.le_s", [0x58] = "i64.le_u",
    [0x59] = "i64.ge_s", [0x5A] = "i64.ge_u", [0x5B] = "f32.eq", [0x5C] = "f32.ne", [0x5D] = "f32.lt",
    [0x5E] = "f32.gt", [0x5F] = "f32.le", [0x60] = "f32.ge", [0x61] = "f64.eq", [0x62] = "f64.ne", [0x63] = "f64.lt",
    [0x64] = "f64.gt", [0x65] = "f64.le", [0x66] = "f64.ge", [0x67] = "i32.clz", [0x68] = "i32.ctz",
    [0x69] = "i32.popcnt", [0x6A] = "i32.add", [0x6B] = "i32.sub", [0x6C] = "i32.mul", [0x6D] = "i32.div_s",
    [0x6E] = "i32.div_u", [0x6F] = "i32.rem_s", [0x70] = "i32.rem_u", [0x71] = "i32.and", [0x72] = "i32.or",
    [0x73] = "i32.xor", [0x74] = "i32.shl", [0x75] = "i32.shr_s", [0x76] = "i32.shr_u", [0x77] = "i32.rotl",
    [0x78] = "i32.rotr", [0x79] = "i64.clz", [0x7A] = "i64.ctz", [0x7B] = "i64.popcnt", [0x7C] = "i64.add",
    [0x7D] = "i64.sub", [0x7E] = "i64.mul", [0x7F] = "i64.div_s", [0x80] = "i64.div_u", [0x81] = "i64.rem_s",
    [0x82] = "i64.rem_u", [0x83] = "i64.and", [0x84] = "i64.or", [0x85] = "i64.xor", [0x86] = "i64.shl",
    [0x87] = "i64.shr_s", [0x88] = "i64.shr_u", [0x89] = "i64.rotl", [0x8A] = "i64.rotr", [0x8B] = "f32.abs",
    [0x8C] = "f32.neg", [0x8D] = "f32.ceil", [0x8E] = "f32.floor", [0x8F] = "f32.trunc", [0x90] = "f32.nearest",
    [0x91] = "f32.sqrt", [0x92] = "f32.add", [0x93] = "f32.sub", [0x94] = "f32.mul", [0x95] = "f32.div",
    [0x96] = "f32.min", [0x97] = "f32.max", [0x98] = "f32.copysign", [0x99] = "f64.abs", [0x9A] = "f64.neg",
    [0x9B] = "f64.ceil", [0x9C] = "f64.floor", [0x9D] = "f64.trunc", [0x9E] = "f64.nearest", [0x9F] = "f64.sqrt",
    [0xA0] = "f64.add", [0xA1] = "f64.sub", [0xA2] = "f64.mul", [0xA3] = "f64.div", [0xA4] = "f64.min",
    [0xA5] = "f64.max", [0xA6] = "f64.copysign", [0xA7] = "i32.wrap_i64", [0xA8] = "i32.trunc_f32_s",
    [0xA9] = "i32.trunc_f32_u", [0xAA] = "i32.trunc_f64_s", [0xAB] = "i32.trunc_f64_u", [0xAC] = "i64.extend_i32_s",
    [0xAD] = "i64.extend_i32_u", [0xAE] = "i64.trunc_f32_s", [0xAF] = "i64.trunc_f32_u", [0xB0] = "i64.trunc_f64_s",
    [0xB1] = "i64.trunc_f64_u", [0xB2] = "f32.convert_i32_s", [0xB3] = "f32.convert_i32_u",
    [0xB4] = "f32.convert_i64_s", [0xB5] = "f32.convert_i64_u", [0xB6] = "f32.demote_f64",
    [0xB7] = "f64.convert_i32_s", [0xB8] = "f64.convert_i32_u", [0xB9] = "f64.convert_i64_s",
    [0xBA] = "f64.convert_i64_u", [0xBB] = "f64.promote_f32", [0xBC] = "i32.reinterpret_f32",
    [0xBD] = "i64.reinterpret_f64", [0xBE] = "f32.reinterpret_i32", [0xBF] = "f64.reinterpret_i64",
    [0xC0] = "i32.extend8_s", [0xC1] = "i32.extend16_s", [0xC2] = "i64.extend8_s", [0xC3] = "i64.extend16_s",
    [0xC4] = "i64.extend32_s",
};

static const char *const k_fc_names[12] = {
    "i32.trunc_sat_f32_s", "i32.trunc_sat_f32_u", "i32.trunc_sat_f64_s", "i32.trunc_sat_f64_u",
    "i64.trunc_sat_f32_s", "i64.trunc_sat_f32_u", "i64.trunc_sat_f64_s", "i64.trunc_sat_f64_u",
    "memory.init", "data.drop", "memory.copy", "memory.fill",
};

/* numeric opcodes 0x45..0xC4: [in1 in2] -> [out]; in2 == 0 for unary */
typedef struct { uint8_t in1, in2, out; } numsig;

static const numsig k_numsig[0xC5 - 0x45] = {
    /* 0x45 */ { T_I32, 0, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 },
    /* 0x49 */ { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 },
    /* 0x4D */ { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I64, 0, T_I32 },
    /* 0x51 */ { T_I64, T_I64, T_I32 }, { T_I64, T_I64, T_I32 }, { T_I64, T_I64, T_I32 }, { T_I64, T_I64, T_I32 },
    /* 0x55 */ { T_I64, T_I64, T_I32 }, { T_I64, T_I64, T_I32 }, { T_I64, T_I64, T_I32 }, { T_I64, T_I64, T_I32 },
    /* 0x59 */ { T_I64, T_I64, T_I32 }, { T_I64, T_I64, T_I32 }, { T_F32, T_F32, T_I32 }, { T_F32, T_F32, T_I32 },
    /* 0x5D */ { T_F32, T_F32, T_I32 }, { T_F32, T_F32, T_I32 }, { T_F32, T_F32, T_I32 }, { T_F32, T_F32, T_I32 },
    /* 0x61 */ { T_F64, T_F64, T_I32 }, { T_F64, T_F64, T_I32 }, { T_F64, T_F64, T_I32 }, { T_F64, T_F64, T_I32 },
    /* 0x65 */ { T_F64, T_F64, T_I32 }, { T_F64, T_F64, T_I32 }, { T_I32, 0, T_I32 }, { T_I32, 0, T_I32 },
    /* 0x69 */ { T_I32, 0, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 },
    /* 0x6D */ { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 },
    /* 0x71 */ { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 },
    /* 0x75 */ { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 }, { T_I32, T_I32, T_I32 },
    /* 0x79 */ { T_I64, 0, T_I64 }, { T_I64, 0, T_I64 }, { T_I64, 0, T_I64 }, { T_I64, T_I64, T_I64 },
    /* 0x7D */ { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 },
    /* 0x81 */ { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 },
    /* 0x85 */ { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 },
    /* 0x89 */ { T_I64, T_I64, T_I64 }, { T_I64, T_I64, T_I64 }, { T_F32, 0, T_F32 }, { T_F32, 0, T_F32 },
    /* 0x8D */ { T_F32, 0, T_F32 }, { T_F32, 0, T_F32 }, { T_F32, 0, T_F32 }, { T_F32, 0, T_F32 },
    /* 0x91 */ { T_F32, 0, T_F32 }, { T_F32, T_F32, T_F32 }, { T_F32, T_F32, T_F32 }, { T_F32, T_F32, T_F32 },
    /* 0x95 */ { T_F32, T_F32, T_F32 }, { T_F32, T_F32, T_F32 }, { T_F32, T_F32, T_F32 }, { T_F32, T_F32, T_F32 },
    /* 0x99 */ { T_F64, 0, T_F64 }, { T_F64, 0, T_F64 }, { T_F64, 0, T_F64 }, { T_F64, 0, T_F64 },
    /* 0x9D */ { T_F64, 0, T_F64 }, { T_F64, 0, T_F64 }, { T_F64, 0, T_F64 }, { T_F64, T_F64, T_F64 },
    /* 0xA1 */ { T_F64, T_F64, T_F64 }, { T_F64, T_F64, T_F64 }, { T_F64, T_F64, T_F64 }, { T_F64, T_F64, T_F64 },
    /* 0xA5 */ { T_F64, T_F64, T_F64 }, { T_F64, T_F64, T_F64 }, { T_I64, 0, T_I32 }, { T_F32, 0, T_I32 },
    /* 0xA9 */ { T_F32, 0, T_I32 }, { T_F64, 0, T_I32 }, { T_F64, 0, T_I32 }, { T_I32, 0, T_I64 },
    /* 0xAD */ { T_I32, 0, T_I64 }, { T_F32, 0, T_I64 }, { T_F32, 0, T_I64 }, { T_F64, 0, T_I64 },
    /* 0xB1 */ { T_F64, 0, T_I64 }, { T_I32, 0, T_F32 }, { T_I32, 0, T_F32 }, { T_I64, 0, T_F32 },
    /* 0xB5 */ { T_I64, 0, T_F32 }, { T_F64, 0, T_F32 }, { T_I32, 0, T_F64 }, { T_I32, 0, T_F64 },
    /* 0xB9 */ { T_I64, 0, T_F64 }, { T_I64, 0, T_F64 }, { T_F32, 0, T_F64 }, { T_F32, 0, T_I32 },
    /* 0xBD */ { T_F64, 0, T_I64 }, { T_I32, 0, T_F32 }, { T_I64, 0, T_F64 }, { T_I32, 0, T_I32 },
    /* 0xC1 */ { T_I32, 0, T_I32 }, { T_I64, 0, T_I64 }, { T_I64, 0, T_I64 }, { T_I64, 0, T_I64 },
};

/* memory access: natural alignment log2 and value type; store if is_store */
static void mem_sig(uint8_t op, unsigned *natural, uint8_t *t, int *is_store)
{
    static const uint8_t nat[23] = { 2, 3, 2, 3, 0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 2, 3, 2, 3, 0, 1, 0, 1, 2 };
    static const uint8_t ty[23] = { T_I32, T_I64, T_F32, T_F64, T_I32, T_I32, T_I32, T_I32, T_I64, T_I64, T_I64,
                                    T_I64, T_I64, T_I64, T_I32, T_I64, T_F32, T_F64, T_I32, T_I32, T_I64, T_I64,
                                    T_I64 };
    unsigned i = (unsigned)(op - 0x28);
    *natural = nat[i];
    *t = ty[i];
    *is_store = op >= 0x36;
}

/* operand stack -------------------------------------------------------------------------------------------- */

static int push_slow(V *v, uint8_t t, size_t off)
{
    TRY(grow(v, (void **)&v->vals, &v->vals_cap, v->sp + 1, 1, v->caps.max_operand_stack, off, "operand stack"));
    v->vals[v->sp++] = t;
    return 0;
}

static inline __attribute__((always_inline)) int push(V *v, uint8_t t, size_t off)
{
    if (__builtin_expect(v->sp < v->vals_cap, 1)) { v->vals[v->sp++] = t; return 0; }
    return push_slow(v, t, off);
}

static int work_exceeded(V *v, size_t off)
{
    return vfail(v, off, "validation work limit exceeded (pathological module: %llu stack-slot operations)",
                 (unsigned long long)v->work);
}

static int push_n(V *v, const uint8_t *ts, uint32_t n, size_t off)
{
    v->work += n;
    if (v->work > v->work_limit) return work_exceeded(v, off);
    if (v->sp + n > v->vals_cap)
        TRY(grow(v, (void **)&v->vals, &v->vals_cap, v->sp + n, 1, v->caps.max_operand_stack, off, "operand stack"));
    if (n)
        memcpy(v->vals + v->sp, ts, n);
    v->sp += n;
    return 0;
}

static void fmt_types(char *out, size_t outlen, const uint8_t *ts, size_t n, int ellipsis)
{
    size_t k = 0;
    out[0] = 0;
    if (ellipsis) k += (size_t)snprintf(out, outlen, "...");
    size_t first = n > 8 ? n - 8 : 0;
    if (first && k < outlen) k += (size_t)snprintf(out + k, outlen - k, "%s... (%zu values)", k ? " " : "", n);
    for (size_t i = first; i < n && k < outlen; i++)
        k += (size_t)snprintf(out + k, outlen - k, "%s%s", k ? " " : "", tname(ts[i]));
}

/* Check that the top of the operand stack matches exp[0..n) (exp[n-1] on top) and pop it. With keep, the values
 * are pushed back as they were popped (unknowns materialised), as br_table's per-label check requires. */
static int pop_check_ix(V *v, const uint8_t *exp, uint32_t n, const char *what, int64_t ix, size_t off, int keep)
{
    ctrl *c = &v->ctrls[v->csp - 1];
    size_t avail = v->sp - c->height;
    v->work += n;
    if (v->work > v->work_limit) return work_exceeded(v, off);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t want = exp[n - 1 - i];
        if (i < avail) {
            uint8_t got = v->vals[v->sp - 1 - i];
            if (got != want && got != T_ANY && want != T_ANY) goto mismatch;
        } else if (!c->unreachable) {
            goto mismatch;
        }
    }
    if (keep) {
        /* br_table: every label must accept one and the same sequence of types, so unknown values are refined to
         * the label's types (and missing ones materialised) before the next label is checked */
        if (avail < n) {
            size_t add = n - avail;
            if (v->sp + add > v->vals_cap)
                TRY(grow(v, (void **)&v->vals, &v->vals_cap, v->sp + add, 1, v->caps.max_operand_stack, off,
                         "operand stack"));
            memmove(v->vals + c->height + add, v->vals + c->height, avail);
            memset(v->vals + c->height, T_ANY, add);
            v->sp += add;
        }
        for (uint32_t i = 0; i < n; i++)
            if (v->vals[v->sp - 1 - i] == T_ANY) v->vals[v->sp - 1 - i] = exp[n - 1 - i];
    } else {
        v->sp -= n < avail ? n : avail;
    }
    return 0;
mismatch: {
        char e[160], g[160];
        size_t show = avail < n ? avail : n;
        fmt_types(e, sizeof e, exp, n, 0);
        fmt_types(g, sizeof g, v->vals + v->sp - show, show, c->unreachable && avail < n);
        if (ix >= 0) return vfail(v, off, "type mismatch: %s %lld expects [%s], got [%s]", what, (long long)ix, e, g);
        return vfail(v, off, "type mismatch: %s expects [%s], got [%s]", what, e, g);
    }
}

/* pops exp[0..n) when the top of the stack matches exactly (the common case), else takes the general path */
static inline __attribute__((always_inline)) int popn_ix(V *v, const uint8_t *exp, uint32_t n, const char *what,
                                                         int64_t ix, size_t off)
{
    const ctrl *c = &v->ctrls[v->csp - 1];
    if (__builtin_expect(n <= 4 && v->sp >= (size_t)c->height + n, 1)) {
        const uint8_t *top = v->vals + v->sp - n;
        uint32_t i = 0;
        while (i < n && top[i] == exp[i]) i++;
        if (i == n) { v->sp -= n; return 0; }
    }
    return pop_check_ix(v, exp, n, what, ix, off, 0);
}

static inline __attribute__((always_inline)) int pop_check(V *v, const uint8_t *exp, uint32_t n, const char *what,
                                                            size_t off, int keep)
{
    if (!keep) return popn_ix(v, exp, n, what, -1, off);
    return pop_check_ix(v, exp, n, what, -1, off, keep);
}

/* pops [a b] (b on top) */
static inline __attribute__((always_inline)) int pop2(V *v, uint8_t a, uint8_t b, const char *what, size_t off)
{
    const ctrl *c = &v->ctrls[v->csp - 1];
    if (__builtin_expect(v->sp >= (size_t)c->height + 2 && v->vals[v->sp - 1] == b && v->vals[v->sp - 2] == a, 1)) {
        v->sp -= 2;
        return 0;
    }
    uint8_t in[2] = { a, b };
    return pop_check(v, in, 2, what, off, 0);
}

static inline __attribute__((always_inline)) int pop1(V *v, uint8_t t, const char *what, size_t off)
{
    ctrl *c = &v->ctrls[v->csp - 1];
    if (v->sp > c->height) {
        uint8_t got = v->vals[v->sp - 1];
        if (got == t || got == T_ANY || t == T_ANY) { v->sp--; return 0; }
    } else if (c->unreachable) {
        return 0;
    }
    return pop_check(v, &t, 1, what, off, 0);
}

/* pops any value, returning its type (T_ANY if unknown) */
static int pop_any(V *v, uint8_t *t, const char *what, size_t off)
{
    ctrl *c = &v->ctrls[v->csp - 1];
    if (v->sp > c->height) { *t = v->vals[--v->sp]; return 0; }
    if (c->unreachable) { *t = T_ANY; return 0; }
    return vfail(v, off, "type mismatch: %s expects a value, got []", what);
}

static int push_ctrl(V *v, uint8_t op, const uint8_t *params, uint32_t np, const uint8_t *results, uint32_t nr,
                     size_t off)
{
    if (v->csp >= v->caps.max_nesting_depth)
        return vfail(v, off, "control nesting depth exceeds the limit of %u", v->caps.max_nesting_depth);
    if (v->csp >= v->ctrls_cap)
        TRY(grow(v, (void **)&v->ctrls, &v->ctrls_cap, v->csp + 1, sizeof(ctrl), v->caps.max_nesting_depth, off,
                 "control stack"));
    ctrl *c = &v->ctrls[v->csp++];
    if (v->csp > v->info.max_nesting_depth) v->info.max_nesting_depth = (uint32_t)v->csp;
    c->op = op;
    c->params = params;
    c->np = np;
    c->results = results;
    c->nr = nr;
    c->height = (uint32_t)v->sp;
    c->unreachable = 0;
    return push_n(v, params, np, off);
}

static void set_unreachable(V *v)
{
    ctrl *c = &v->ctrls[v->csp - 1];
    v->sp = c->height;
    c->unreachable = 1;
}

static int local_type_slow(V *v, uint32_t idx, uint8_t *t, size_t off);

static inline __attribute__((always_inline)) int local_type(V *v, uint32_t idx, uint8_t *t, size_t off)
{
    if (__builtin_expect(v->flat != NULL && idx < v->nlocals, 1)) { *t = v->flat[idx]; return 0; }
    return local_type_slow(v, idx, t, off);
}

static int local_type_slow(V *v, uint32_t idx, uint8_t *t, size_t off)
{
    if (idx >= v->nlocals) return vfail(v, off, "unknown local %u (function has %llu locals incl. parameters)", idx,
                                        (unsigned long long)v->nlocals);
    if (v->flat) { *t = v->flat[idx]; return 0; }
    size_t lo = 0, hi = v->nlocalruns;   /* first run with end > idx */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->locals[mid].end > idx) hi = mid; else lo = mid + 1;
    }
    *t = v->locals[lo].type;
    return 0;
}

static int label_of(V *v, uint32_t depth, const uint8_t **ts, uint32_t *n, size_t off)
{
    if (depth >= v->csp) return vfail(v, off, "unknown label %u (depth is %zu)", depth, v->csp);
    ctrl *c = &v->ctrls[v->csp - 1 - depth];
    if (c->op == 0x03) { *ts = c->params; *n = c->np; }
    else { *ts = c->results; *n = c->nr; }
    return 0;
}

static int rd_blocktype(V *v, rd *r, const uint8_t **params, uint32_t *np, const uint8_t **results, uint32_t *nr)
{
    const uint8_t *at = r->p;
    if (r->p >= r->end) return rd_eof(v, r, "block type");
    uint8_t b = *r->p;
    *params = NULL; *np = 0; *results = NULL; *nr = 0;
    if (b == 0x40) { r->p++; return 0; }
    if (b == T_I32 || b == T_I64 || b == T_F32 || b == T_F64) { r->p++; *results = single_type(b); *nr = 1; return 0; }
    if (b == 0x7B) return vfail(v, OFF(v, at), "unsupported: SIMD block type v128");
    if (b == 0x70 || b == 0x6F) return vfail(v, OFF(v, at), "unsupported: reference-typed block result");
    int64_t x;
    TRY(rd_s33(v, r, &x, "block type"));
    if (x < 0) return vfail(v, OFF(v, at), "malformed block type 0x%02x", b);
    if ((uint64_t)x >= v->ntypes) return vfail(v, OFF(v, at), "unknown type %lld in block type", (long long)x);
    const functype *ft = &v->types[x];
    *params = v->typebuf + ft->off;
    *np = ft->np;
    *results = v->typebuf + ft->off + ft->np;
    *nr = ft->nr;
    return 0;
}

static int rd_memarg(V *v, rd *r, unsigned natural, const char *name)
{
    const uint8_t *at = r->p;
    uint32_t align, offset;
    TRY(rd_u32(v, r, &align, "memory alignment"));
    if (align & 0x40) return vfail(v, OFF(v, at), "unsupported: %s with a memory index (multi-memory)", name);
    TRY(rd_u32(v, r, &offset, "memory offset"));
    if (v->nmems == 0) return vfail(v, OFF(v, at), "unknown memory 0 (%s)", name);
    if (align > natural)
        return vfail(v, OFF(v, at), "alignment must not be larger than natural: %s alignment 2^%u > 2^%u", name, align,
                     natural);
    return 0;
}

static int zero_byte(V *v, rd *r, const char *name)
{
    const uint8_t *at = r->p;
    uint8_t b;
    TRY(rd_u8(v, r, &b, name));
    if (b != 0) {
        if (b & 0x80) return vfail(v, OFF(v, at), "zero flag expected after %s (got a multi-byte encoding)", name);
        return vfail(v, OFF(v, at), "unsupported: %s with memory index %u (zero flag expected; multi-memory)", name, b);
    }
    if (v->nmems == 0) return vfail(v, OFF(v, at), "unknown memory 0 (%s)", name);
    return 0;
}

static int unsupported_op(V *v, size_t off, uint8_t op)
{
    const char *what = NULL;
    switch (op) {
    case 0x06: case 0x07: case 0x08: case 0x09: case 0x0A: case 0x18: case 0x19: what = "exception handling"; break;
    case 0x12: case 0x13: what = "tail calls (return_call)"; break;
    case 0x14: case 0x15: what = "typed function references (call_ref)"; break;
    case 0x1C: what = "typed select (reference types)"; break;
    case 0x25: case 0x26: what = "table.get/table.set (reference types)"; break;
    case 0xD0: case 0xD1: case 0xD2: what = "ref.* instructions (reference types)"; break;
    case 0xFB: what = "GC instructions"; break;
    case 0xFD: what = "SIMD instructions (0xFD prefix)"; break;
    case 0xFE: what = "threads/atomics instructions (0xFE prefix)"; break;
    default: break;
    }
    if (what) return vfail(v, off, "unsupported: opcode 0x%02x: %s", op, what);
    return vfail(v, off, "illegal opcode 0x%02x", op);
}

static int func_body(V *v, rd *r, uint32_t fidx)
{
    const functype *ft = &v->types[v->func_types[fidx]];
    const uint8_t *fparams = v->typebuf + ft->off, *fresults = fparams + ft->np;

    /* locals: params first, then declared runs */
    v->nlocalruns = 0;
    v->nlocals = 0;
    uint32_t nruns;
    TRY(rd_count(v, r, &nruns, UINT32_MAX, 2, "local declarations"));
    size_t needruns = (size_t)ft->np + nruns;
    TRY(grow(v, (void **)&v->locals, &v->locals_cap, needruns ? needruns : 1, sizeof(localrun), SIZE_MAX / 32,
             OFF(v, r->p), "locals"));
    for (uint32_t i = 0; i < ft->np; i++) {
        v->nlocals++;
        v->locals[v->nlocalruns].end = v->nlocals;
        v->locals[v->nlocalruns++].type = fparams[i];
    }
    for (uint32_t i = 0; i < nruns; i++) {
        const uint8_t *at = r->p;
        uint32_t cnt;
        uint8_t t;
        TRY(rd_u32(v, r, &cnt, "local count"));
        TRY(rd_valtype(v, r, &t, "local type"));
        v->nlocals += cnt;
        if (v->nlocals > UINT32_MAX) return vfail(v, OFF(v, at), "too many locals (more than 2^32-1)");
        if (v->nlocals - ft->np > v->caps.max_locals_per_function)
            return vfail(v, OFF(v, at), "too many locals: %llu (limit %u)",
                         (unsigned long long)(v->nlocals - ft->np), v->caps.max_locals_per_function);
        if (cnt == 0) continue;
        v->locals[v->nlocalruns].end = v->nlocals;
        v->locals[v->nlocalruns++].type = t;
    }

    /* expand the locals to a byte per local when that costs no more than a few times the body's size */
    v->flat = NULL;
    if (v->nlocals <= 4 * (uint64_t)(r->end - r->p) + 256) {
        TRY(grow(v, (void **)&v->flatbuf, &v->flat_cap, (size_t)v->nlocals + 1, 1, SIZE_MAX / 2, OFF(v, r->p),
                 "locals"));
        uint64_t k = 0;
        for (size_t i = 0; i < v->nlocalruns; i++) {
            memset(v->flatbuf + k, v->locals[i].type, (size_t)(v->locals[i].end - k));
            k = v->locals[i].end;
        }
        v->flat = v->flatbuf;
    }

    v->sp = 0;
    v->csp = 0;
    TRY(push_ctrl(v, 0, NULL, 0, fresults, ft->nr, OFF(v, r->p)));
    /* the function frame has no params on the stack */

    while (v->csp > 0) {
        const uint8_t *at = r->p;
        size_t off = OFF(v, at);
        uint8_t op;
        if (r->p >= r->end) return vfail(v, off, "unexpected end of function body (missing end)");
        op = *r->p++;
        /* the most frequent instructions first, without the switch's indirect jump */
        if (op >= 0x45 && op <= 0xC4) {
            const numsig s = k_numsig[op - 0x45];
            if (s.in2) TRY(pop2(v, s.in1, s.in2, k_opnames[op], off));
            else TRY(pop1(v, s.in1, k_opnames[op], off));
            TRY(push(v, s.out, off));
            continue;
        }
        if (op == 0x20) {
            uint32_t li;
            uint8_t t;
            TRY(rd_u32(v, r, &li, "local index"));
            TRY(local_type(v, li, &t, off));
            TRY(push(v, t, off));
            continue;
        }
        const char *name = k_opnames[op];
        switch (op) {
        case 0x00: set_unreachable(v); break;
        case 0x01: break;
        case 0x02: case 0x03: {
            const uint8_t *ps, *rs;
            uint32_t np, nr;
            TRY(rd_blocktype(v, r, &ps, &np, &rs, &nr));
            TRY(pop_check(v, ps, np, name, off, 0));
            TRY(push_ctrl(v, op, ps, np, rs, nr, off));
            break;
        }
        case 0x04: {
            const uint8_t *ps, *rs;
            uint32_t np, nr;
            TRY(rd_blocktype(v, r, &ps, &np, &rs, &nr));
            TRY(pop1(v, T_I32, "if condition", off));
            TRY(pop_check(v, ps, np, name, off, 0));
            TRY(push_ctrl(v, op, ps, np, rs, nr, off));
            break;
        }
        case 0x05: {
            ctrl *c = &v->ctrls[v->csp - 1];
            if (c->op != 0x04) return vfail(v, off, "else without matching if");
            TRY(pop_check(v, c->results, c->nr, "else (end of then branch)", off, 0));
            if (v->sp != c->height)
                return vfail(v, off, "type mismatch: %zu extra value(s) on the stack at the end of the then branch",
                             v->sp - c->height);
            c->op = 0x05;
            c->unreachable = 0;
            TRY(push_n(v, c->params, c->np, off));
            break;
        }
        case 0x0B: {
            ctrl *c = &v->ctrls[v->csp - 1];
            TRY(pop_check(v, c->results, c->nr, c->op == 0 ? "end of function" : "end of block", off, 0));
            if (v->sp != c->height)
                return vfail(v, off, "type mismatch: %zu extra value(s) on the stack at the end of the %s",
                             v->sp - c->height, c->op == 0 ? "function" : "block");
            if (c->op == 0x04) {
                /* if without else: the implicit else passes params through unchanged */
                int same = c->np == c->nr && (c->np == 0 || memcmp(c->params, c->results, c->np) == 0);
                if (!same) return vfail(v, off, "type mismatch: if without else must have matching parameter and result types");
            }
            const uint8_t *rs = c->results;
            uint32_t nr = c->nr;
            v->csp--;
            if (v->csp > 0) TRY(push_n(v, rs, nr, off));
            break;
        }
        case 0x0C: {
            uint32_t l, n;
            const uint8_t *ts;
            TRY(rd_u32(v, r, &l, "label index"));
            TRY(label_of(v, l, &ts, &n, off));
            TRY(pop_check(v, ts, n, "br", off, 0));
            set_unreachable(v);
            break;
        }
        case 0x0D: {
            uint32_t l, n;
            const uint8_t *ts;
            TRY(rd_u32(v, r, &l, "label index"));
            TRY(label_of(v, l, &ts, &n, off));
            TRY(pop1(v, T_I32, "br_if condition", off));
            TRY(pop_check(v, ts, n, "br_if", off, 0));
            TRY(push_n(v, ts, n, off));
            break;
        }
        case 0x0E: {
            /* every target (the default last) must accept the same operand types; a target whose label types are
             * the same array as the previous one's needs no second check (the check is idempotent) */
            uint32_t cnt, l, n, lastn = 0;
            const uint8_t *ts, *last = NULL;
            TRY(rd_count(v, r, &cnt, v->caps.max_br_table_targets, 1, "br_table targets"));
            TRY(pop1(v, T_I32, "br_table index", off));
            for (uint32_t i = 0; i <= cnt; i++) {
                const uint8_t *lp = r->p;
                TRY(rd_u32(v, r, &l, "label index"));
                TRY(label_of(v, l, &ts, &n, OFF(v, lp)));
                if (i > 0 && n != lastn)
                    return vfail(v, OFF(v, lp), "type mismatch: br_table targets have different arities (%u and %u)",
                                 lastn, n);
                if (i == 0 || ts != last) TRY(pop_check(v, ts, n, "br_table", off, 1));
                last = ts;
                lastn = n;
            }
            set_unreachable(v);
            break;
        }
        case 0x0F:
            TRY(pop_check(v, fresults, ft->nr, "return", off, 0));
            set_unreachable(v);
            break;
        case 0x10: {
            uint32_t fi;
            TRY(rd_u32(v, r, &fi, "function index"));
            if (fi >= v->nfuncs) return vfail(v, off, "unknown function %u", fi);
            const functype *ct = &v->types[v->func_types[fi]];
            const uint8_t *cp = v->typebuf + ct->off;
            TRY(popn_ix(v, cp, ct->np, "call", fi, off));
            TRY(push_n(v, cp + ct->np, ct->nr, off));
            break;
        }
        case 0x11: {
            uint32_t ti, tab;
            TRY(rd_u32(v, r, &ti, "type index"));
            const uint8_t *tp = r->p;
            /* table index: MVP has a 0x00 byte; reference types made it a LEB (LLVM >= 19 pads it to 5 bytes) */
            TRY(rd_u32(v, r, &tab, "table index"));
            if (tab != 0) return vfail(v, OFF(v, tp), "unsupported: call_indirect on table %u (only table 0)", tab);
            if (v->ntables == 0) return vfail(v, off, "unknown table 0 (call_indirect)");
            if (ti >= v->ntypes) return vfail(v, off, "unknown type %u (call_indirect)", ti);
            const functype *ct = &v->types[ti];
            const uint8_t *cp = v->typebuf + ct->off;
            TRY(pop1(v, T_I32, "call_indirect table slot", off));
            TRY(pop_check_ix(v, cp, ct->np, "call_indirect of type", ti, off, 0));
            TRY(push_n(v, cp + ct->np, ct->nr, off));
            break;
        }
        case 0x1A: { uint8_t t; TRY(pop_any(v, &t, name, off)); break; }
        case 0x1B: {
            uint8_t t1, t2;
            TRY(pop1(v, T_I32, "select condition", off));
            TRY(pop_any(v, &t1, name, off));
            TRY(pop_any(v, &t2, name, off));
            if (t1 != t2 && t1 != T_ANY && t2 != T_ANY)
                return vfail(v, off, "type mismatch: select operands have different types [%s %s]", tname(t2),
                             tname(t1));
            TRY(push(v, t1 == T_ANY ? t2 : t1, off));
            break;
        }
        case 0x20: case 0x21: case 0x22: {
            uint32_t li;
            uint8_t t;
            TRY(rd_u32(v, r, &li, "local index"));
            TRY(local_type(v, li, &t, off));
            if (op == 0x20) TRY(push(v, t, off));
            else {
                TRY(popn_ix(v, &t, 1, name, li, off));
                if (op == 0x22) TRY(push(v, t, off));
            }
            break;
        }
        case 0x23: case 0x24: {
            uint32_t gi;
            TRY(rd_u32(v, r, &gi, "global index"));
            if (gi >= v->nglobals) return vfail(v, off, "unknown global %u", gi);
            uint8_t t = v->global_types[gi];
            if (op == 0x23) TRY(push(v, t, off));
            else {
                if (!v->global_mut[gi]) return vfail(v, off, "global.set of immutable global %u (global is immutable)", gi);
                TRY(popn_ix(v, &t, 1, "global.set", gi, off));
            }
            break;
        }
        case 0x28: case 0x29: case 0x2A: case 0x2B: case 0x2C: case 0x2D: case 0x2E: case 0x2F: case 0x30:
        case 0x31: case 0x32: case 0x33: case 0x34: case 0x35: case 0x36: case 0x37: case 0x38: case 0x39:
        case 0x3A: case 0x3B: case 0x3C: case 0x3D: case 0x3E: {
            unsigned natural;
            uint8_t t;
            int is_store;
            mem_sig(op, &natural, &t, &is_store);
            TRY(rd_memarg(v, r, natural, name));
            if (is_store) {
                TRY(pop2(v, T_I32, t, name, off));
            } else {
                TRY(pop1(v, T_I32, name, off));
                TRY(push(v, t, off));
            }
            break;
        }
        case 0x3F:
            TRY(zero_byte(v, r, name));
            TRY(push(v, T_I32, off));
            break;
        case 0x40:
            TRY(zero_byte(v, r, name));
            TRY(pop1(v, T_I32, name, off));
            TRY(push(v, T_I32, off));
            break;
        case 0x41: { int32_t x; TRY(rd_s32(v, r, &x, "i32 constant")); TRY(push(v, T_I32, off)); break; }
        case 0x42: { int64_t x; TRY(rd_s64(v, r, &x, "i64 constant")); TRY(push(v, T_I64, off)); break; }
        case 0x43: { const uint8_t *b; TRY(rd_bytes(v, r, 4, &b, "f32 constant")); TRY(push(v, T_F32, off)); break; }
        case 0x44: { const uint8_t *b; TRY(rd_bytes(v, r, 8, &b, "f64 constant")); TRY(push(v, T_F64, off)); break; }
        case 0xFC: {
            uint32_t sub;
            TRY(rd_u32(v, r, &sub, "0xFC sub-opcode"));
            if (sub <= 7) {
                static const uint8_t in[8] = { T_F32, T_F32, T_F64, T_F64, T_F32, T_F32, T_F64, T_F64 };
                static const uint8_t out[8] = { T_I32, T_I32, T_I32, T_I32, T_I64, T_I64, T_I64, T_I64 };
                TRY(pop1(v, in[sub], k_fc_names[sub], off));
                TRY(push(v, out[sub], off));
            } else if (sub == 10) {
                TRY(zero_byte(v, r, "memory.copy"));
                TRY(zero_byte(v, r, "memory.copy"));
                static const uint8_t in[3] = { T_I32, T_I32, T_I32 };
                TRY(pop_check(v, in, 3, "memory.copy", off, 0));
            } else if (sub == 11) {
                TRY(zero_byte(v, r, "memory.fill"));
                static const uint8_t in[3] = { T_I32, T_I32, T_I32 };
                TRY(pop_check(v, in, 3, "memory.fill", off, 0));
            } else if (sub == 8 || sub == 9) {
                return vfail(v, off, "unsupported: %s (bulk memory passive segments)", k_fc_names[sub]);
            } else if (sub >= 12 && sub <= 17) {
                return vfail(v, off, "unsupported: table instruction 0xFC %u (table.init/elem.drop/table.copy/"
                             "table.grow/table.size/table.fill)", sub);
            } else {
                return vfail(v, off, "illegal opcode 0xFC %u", sub);
            }
            break;
        }
        default:
            if (op >= 0x45 && op <= 0xC4) {
                const numsig s = k_numsig[op - 0x45];
                if (s.in2) {
                    TRY(pop2(v, s.in1, s.in2, name, off));
                } else {
                    TRY(pop1(v, s.in1, name, off));
                }
                TRY(push(v, s.out, off));
                break;
            }
            return unsupported_op(v, off, op);
        }
    }
    if (r->p != r->end)
        return vfail(v, OFF(v, r->p), "function body has %zu bytes after its final end (section size mismatch)",
                     (size_t)(r->end - r->p));
    return 0;
}

static int sec_code(V *v, rd *r)
{
    uint32_t n;
    const uint8_t *at0 = r->p;
    TRY(rd_count(v, r, &n, v->caps.max_functions, 2, "function bodies"));
    if (n != v->ndefined_declared)
        return vfail(v, OFF(v, at0), "function and code section have inconsistent lengths (%u declared, %u bodies)",
                     v->ndefined_declared, n);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *at = r->p;
        uint32_t size;
        TRY(rd_u32(v, r, &size, "function body size"));
        if (size > v->caps.max_body_bytes)
            return vfail(v, OFF(v, at), "function %u: body of %u bytes exceeds the limit of %u", v->nfunc_imports + i,
                         size, v->caps.max_body_bytes);
        if ((size_t)(r->end - r->p) < size)
            return vfail(v, OFF(v, at), "function %u: body size %u exceeds the section (unexpected end)",
                         v->nfunc_imports + i, size);
        rd body = { r->p, r->p + size };
        v->in_func = 1;
        v->func_index = v->nfunc_imports + i;
        TRY(func_body(v, &body, v->nfunc_imports + i));
        v->in_func = 0;
        r->p += size;
    }
    v->ncode = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------ */

void phase_wasm_caps_default(phase_wasm_caps *c)
{
    memset(c, 0, sizeof *c);
    c->max_module_bytes = 64u << 20;
    c->max_types = 100000;
    c->max_functions = 200000;
    c->max_imports = 10000;
    c->max_exports = 100000;
    c->max_globals = 100000;
    c->max_data_segments = 100000;
    c->max_elem_segments = 100000;
    c->max_table_size = 1u << 20;
    c->max_locals_per_function = 50000;
    c->max_params = 1000;
    c->max_results = 1000;
    c->max_nesting_depth = 1u << 18;
    c->max_body_bytes = 8u << 20;
    c->max_operand_stack = 1u << 20;
    c->max_br_table_targets = 1u << 20;
    c->work_per_byte = 64;
}

static const char *section_name(uint8_t id)
{
    static const char *const names[13] = { "custom", "type", "import", "function", "table", "memory", "global",
                                           "export", "start", "element", "code", "data", "data count" };
    return id < 13 ? names[id] : "unknown";
}

/* order rank of each known section id */
static int section_rank(uint8_t id)
{
    switch (id) {
    case 1: return 1; case 2: return 2; case 3: return 3; case 4: return 4; case 5: return 5; case 6: return 6;
    case 7: return 7; case 8: return 8; case 9: return 9; case 12: return 10; case 10: return 11; case 11: return 12;
    default: return 0;
    }
}

static int validate(V *v, phase_wasm_import_check check, void *cbctx)
{
    rd r = { v->base, v->base + v->len };
    if (v->len > v->caps.max_module_bytes)
        return vfail(v, 0, "module of %zu bytes exceeds the limit of %zu", v->len, v->caps.max_module_bytes);
    if (v->len < 4 || memcmp(v->base, "\0asm", 4) != 0) return vfail(v, 0, "magic header not detected");
    if (v->len < 8) return vfail(v, 4, "unexpected end (no version)");
    if (memcmp(v->base + 4, "\1\0\0\0", 4) != 0) return vfail(v, 4, "unknown binary version");
    r.p += 8;
    v->work_limit = (uint64_t)v->len > (UINT64_MAX >> 1) / v->caps.work_per_byte
                        ? UINT64_MAX >> 1
                        : (uint64_t)v->caps.work_per_byte * v->len + (1u << 20);

    int last = 0;
    while (r.p < r.end) {
        const uint8_t *at = r.p;
        uint8_t id;
        uint32_t size;
        v->section = NULL;
        TRY(rd_u8(v, &r, &id, "section id"));
        int rank = section_rank(id);
        if (id != 0 && rank == 0) return vfail(v, OFF(v, at), "malformed section id %u", id);
        TRY(rd_u32(v, &r, &size, "section size"));
        if ((size_t)(r.end - r.p) < size)
            return vfail(v, OFF(v, at), "%s section: size %u exceeds the module (unexpected end / length out of bounds)",
                         section_name(id), size);
        rd s = { r.p, r.p + size };
        v->section = section_name(id);
        if (id == 0) {
            const uint8_t *nm;
            uint32_t nl;
            TRY(rd_name(v, &s, &nm, &nl, "custom section name"));
            r.p += size;
            continue;
        }
        if (rank <= last)
            return vfail(v, OFF(v, at), rank == last ? "duplicate %s section" : "unexpected %s section (sections out "
                         "of order, or junk after the last section)", section_name(id));
        last = rank;
        int rc = 0;
        switch (id) {
        case 1: rc = sec_type(v, &s); break;
        case 2: rc = sec_import(v, &s, check, cbctx); break;
        case 3: rc = sec_function(v, &s); break;
        case 4: rc = sec_table(v, &s); break;
        case 5: rc = sec_memory(v, &s); break;
        case 6: rc = sec_global(v, &s); break;
        case 7: rc = sec_export(v, &s); break;
        case 8: rc = sec_start(v, &s); break;
        case 9: rc = sec_element(v, &s); break;
        case 12: rc = sec_datacount(v, &s); break;
        case 10: rc = sec_code(v, &s); break;
        case 11: rc = sec_data(v, &s); break;
        default: break;
        }
        if (rc) return -1;
        if (s.p != s.end)
            return vfail(v, OFF(v, s.p), "section size mismatch: %zu unused bytes at the end of the section",
                         (size_t)(s.end - s.p));
        r.p += size;
    }
    v->section = NULL;
    if (v->ndefined_declared != v->ncode)
        return vfail(v, v->len, "function and code section have inconsistent lengths (%u declared, %u bodies)",
                     v->ndefined_declared, v->ncode);
    if (v->has_datacount && v->datacount != v->info.num_data_segments)
        return vfail(v, v->len, "data count (%u) and data section have inconsistent lengths (%u)", v->datacount,
                     v->info.num_data_segments);
    return 0;
}

int phase_wasm_validate(const uint8_t *bytes, size_t len, const phase_wasm_caps *caps,
                        phase_wasm_import_check check, void *ctx, phase_wasm_info *info,
                        char *err, size_t errlen)
{
    V v;
    memset(&v, 0, sizeof v);
    if (caps) v.caps = *caps; else phase_wasm_caps_default(&v.caps);
    if (v.caps.max_nesting_depth == 0) v.caps.max_nesting_depth = 1;
    if (v.caps.max_operand_stack == 0) v.caps.max_operand_stack = 1;
    if (v.caps.work_per_byte == 0) v.caps.work_per_byte = 64;
    if (v.caps.max_br_table_targets == 0) v.caps.max_br_table_targets = 1u << 20;
    v.base = bytes;
    v.len = bytes ? len : 0;
    v.err = err;
    v.errlen = errlen;
    if (err && errlen) err[0] = 0;
    if (info) memset(info, 0, sizeof *info);
    /* The operand stack is never NULL, so arithmetic on it stays defined (UBSan, found by tests/fuzz); its first
     * allocation respects max_operand_stack like every later one. */
    if (grow(&v, (void **)&v.vals, &v.vals_cap, 1, 1, v.caps.max_operand_stack, 0, "operand stack") != 0) return -1;

    int rc = validate(&v, check, ctx);
    if (rc == 0 && info) {
        v.info.num_imported_functions = v.nfunc_imports;
        v.info.num_defined_functions = v.ndefined_declared;
        *info = v.info;
    }

    free(v.types);
    free(v.typebuf);
    free(v.func_types);
    free(v.global_types);
    free(v.global_mut);
    free(v.vals);
    free(v.ctrls);
    free(v.locals);
    free(v.flatbuf);
    free(v.sigbuf);
    return rc ? -1 : 0;
}
