/* Mutation fuzzer for the module validator (csrc/wasm_validate.c); build it with ASan+UBSan.
 *
 *   gcc -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Icsrc csrc/wasm_validate*.c \
 *       tests/validator/fuzz_validate.c -o fuzz_validate
 *   ./fuzz_validate ITERATIONS SEED seed1.wasm [seed2.wasm ...]
 *
 * Each iteration takes a seed module (or random bytes behind a valid header), applies 1-8 random mutations
 * (bit flips, interesting bytes, LEB-ish runs, insertions, deletions, chunk copies, truncation) and validates it,
 * with default caps, tiny caps or every cap at its maximum. Invariants: no sanitizer report, and a rejection always comes with a
 * non-empty, NUL-terminated message. Prints how many mutants were accepted/rejected.
 *
 * With -DPHASE_LIBFUZZER and clang -fsanitize=fuzzer,address,undefined it is a libFuzzer target instead
 * (for long runs: ./fuzz_validate -max_total_time=3600 corpus/). */
#include "wasm_validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_one(const uint8_t *data, size_t len, int tiny)
{
    phase_wasm_caps caps;
    phase_wasm_caps_default(&caps);
    if (tiny) {
        caps.max_types = 4; caps.max_functions = 8; caps.max_imports = 2; caps.max_exports = 4;
        caps.max_globals = 2; caps.max_data_segments = 2; caps.max_elem_segments = 2; caps.max_table_size = 16;
        caps.max_locals_per_function = 8; caps.max_params = 3; caps.max_results = 2; caps.max_nesting_depth = 4;
        caps.max_body_bytes = 64; caps.max_operand_stack = 8; caps.max_br_table_targets = 4; caps.work_per_byte = 2;
    } else if (tiny == 2) {   /* a careless caller: every cap at its maximum */
        caps.max_module_bytes = SIZE_MAX;
        caps.max_types = caps.max_functions = caps.max_imports = caps.max_exports = caps.max_globals = UINT32_MAX;
        caps.max_data_segments = caps.max_elem_segments = caps.max_table_size = UINT32_MAX;
        caps.max_locals_per_function = caps.max_params = caps.max_results = caps.max_nesting_depth = UINT32_MAX;
        caps.max_body_bytes = caps.max_operand_stack = caps.max_br_table_targets = caps.work_per_byte = UINT32_MAX;
    }
    char err[256];
    memset(err, 'x', sizeof err);
    phase_wasm_info info;
    int rc = phase_wasm_validate(data, len, &caps, NULL, NULL, &info, err, sizeof err);
    if (rc != 0 && (err[0] == 0 || memchr(err, 0, sizeof err) == NULL)) {
        fprintf(stderr, "rejection without a proper message\n");
        abort();
    }
    /* a tiny error buffer must also be safe */
    char small[8];
    (void)phase_wasm_validate(data, len, &caps, NULL, NULL, NULL, small, sizeof small);
    (void)phase_wasm_validate(data, len, &caps, NULL, NULL, NULL, NULL, 0);
}

#ifdef PHASE_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_one(data, size, 0);
    check_one(data, size, 1);
    check_one(data, size, 2);
    return 0;
}
#else

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0) { fclose(f); return NULL; }
    unsigned char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    *len = (size_t)n;
    return b;
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: %s ITERATIONS SEED [seed.wasm...]\n", argv[0]); return 2; }
    long iters = atol(argv[1]);
    rng_state = strtoull(argv[2], NULL, 0) * 2654435761u + 88172645463325252ull;
    int nseeds = argc - 3;
    unsigned char **seeds = calloc((size_t)nseeds + 1, sizeof *seeds);
    size_t *lens = calloc((size_t)nseeds + 1, sizeof *lens);
    for (int i = 0; i < nseeds; i++) {
        seeds[i] = slurp(argv[3 + i], &lens[i]);
        if (!seeds[i]) { fprintf(stderr, "cannot read %s\n", argv[3 + i]); return 2; }
    }
    static const uint8_t interesting[] = { 0x00, 0x01, 0x02, 0x03, 0x04, 0x0b, 0x0c, 0x0e, 0x10, 0x11, 0x1b, 0x1c,
                                           0x20, 0x40, 0x41, 0x60, 0x6f, 0x70, 0x7b, 0x7c, 0x7f, 0x80, 0xfc, 0xfd,
                                           0xfe, 0xff };
    size_t cap = 1 << 16;
    uint8_t *buf = malloc(cap);
    long accepted = 0, rejected = 0;
    for (long it = 0; it < iters; it++) {
        size_t len;
        if (nseeds == 0 || rnd() % 16 == 0) {
            len = 8 + rnd() % 256;
            if (len > cap) len = cap;
            memcpy(buf, "\0asm\1\0\0\0", 8);
            for (size_t k = 8; k < len; k++) buf[k] = (uint8_t)rnd();
        } else {
            int s = (int)(rnd() % (uint64_t)nseeds);
            len = lens[s];
            if (len > cap) {
                uint8_t *nb = realloc(buf, len * 2);
                if (!nb) return 2;
                buf = nb;
                cap = len * 2;
            }
            memcpy(buf, seeds[s], len);
        }
        int nmut = (rnd() % 2) ? 1 : 1 + (int)(rnd() % 8);
        for (int m = 0; m < nmut && len > 0; m++) {
            size_t pos = (size_t)(rnd() % len);
            switch (rnd() % 8) {
            case 0: buf[pos] ^= (uint8_t)(1u << (rnd() % 8)); break;
            case 1: buf[pos] = interesting[rnd() % sizeof interesting]; break;
            case 2: buf[pos] = (uint8_t)rnd(); break;
            case 3: { /* a run of continuation bytes */
                size_t n = 1 + rnd() % 6;
                for (size_t k = 0; k < n && pos + k < len; k++) buf[pos + k] = 0x80 | (uint8_t)rnd();
                break;
            }
            case 4: if (len + 1 < cap) { memmove(buf + pos + 1, buf + pos, len - pos); buf[pos] = (uint8_t)rnd(); len++; } break;
            case 5: { size_t n = 1 + rnd() % 4; if (n > len - pos) n = len - pos; memmove(buf + pos, buf + pos + n, len - pos - n); len -= n; break; }
            case 6: { /* copy a chunk over another place */
                size_t src = (size_t)(rnd() % len), n = 1 + rnd() % 16;
                if (n > len - src) n = len - src;
                if (n > len - pos) n = len - pos;
                memmove(buf + pos, buf + src, n);
                break;
            }
            default: if (rnd() % 4 == 0) len = pos; break;
            }
        }
        /* exact-size copy so ASan catches any read past the end */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        phase_wasm_caps caps;
        phase_wasm_caps_default(&caps);
        char err[256];
        if (phase_wasm_validate(exact, len, &caps, NULL, NULL, NULL, err, sizeof err) == 0) accepted++;
        else rejected++;
        check_one(exact, len, (int)(rnd() % 3));
        free(exact);
    }
    printf("fuzz: %ld iterations, %ld accepted, %ld rejected, no crash\n", iters, accepted, rejected);
    for (int i = 0; i < nseeds; i++) free(seeds[i]);
    free(seeds);
    free(lens);
    free(buf);
    return 0;
}
#endif
