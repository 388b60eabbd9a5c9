/* Standalone driver for the module validator: validates each file given and prints "OK" (plus a summary of the
 * module) or "ERROR: <message>" per file. Exit status 0 if all were valid, 1 if any was rejected, 2 on I/O error.
 *   validate_cli [--bench N] [--deny-imports] file.wasm...
 * --bench N validates each file N times and prints the mean time per validation.
 * --deny-imports rejects every imported function through the callback (exercises the callback path). */
#include "wasm_validate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int deny_all(void *ctx, const char *module, size_t module_len, const char *name, size_t name_len,
                    const char *signature, char *err, size_t errlen)
{
    (void)ctx;
    snprintf(err, errlen, "import %.*s.%.*s %s is not allowed", (int)module_len, module, (int)name_len, name,
             signature);
    return 1;
}

static int print_imports(void *ctx, const char *module, size_t module_len, const char *name, size_t name_len,
                         const char *signature, char *err, size_t errlen)
{
    (void)err; (void)errlen;
    if (ctx) printf("import %.*s.%.*s %s\n", (int)module_len, module, (int)name_len, name, signature);
    return 0;
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        unsigned char *nb = realloc(buf, cap * 2);
        if (!nb) { free(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    long bench = 0;
    int deny = 0, show_imports = 0, status = 0;
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
        if (!strcmp(argv[i], "--bench") && i + 1 < argc) bench = atol(argv[++i]);
        else if (!strcmp(argv[i], "--deny-imports")) deny = 1;
        else if (!strcmp(argv[i], "--imports")) show_imports = 1;
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    if (i >= argc) { fprintf(stderr, "usage: %s [--bench N] [--deny-imports] [--imports] file.wasm...\n", argv[0]); return 2; }
    for (; i < argc; i++) {
        size_t len = 0;
        unsigned char *buf = read_file(argv[i], &len);
        if (!buf) { fprintf(stderr, "%s: cannot read\n", argv[i]); status = 2; continue; }
        char err[512];
        phase_wasm_info info;
        int rc = phase_wasm_validate(buf, len, NULL, deny ? deny_all : print_imports, show_imports ? (void *)1 : NULL,
                                     &info, err, sizeof err);
        if (rc == 0) {
            printf("OK functions=%u+%u types=%u exports=%u memory=%d pages=%u max=%s%u start=%d\n",
                   info.num_imported_functions, info.num_defined_functions, info.num_types, info.num_exports,
                   info.has_memory, info.mem_initial_pages, info.mem_has_max ? "" : "none/", info.mem_max_pages,
                   info.has_start);
        } else {
            for (char *c = err; *c; c++)   /* one line per file, whatever a callback wrote */
                if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7F) *c = '?';
            printf("ERROR: %s\n", err);
            if (status == 0) status = 1;
        }
        if (bench > 0) {
            /* best of 5 batches: the machine is shared, the minimum is the least disturbed figure */
            double best = 1e30;
            for (int batch = 0; batch < 5; batch++) {
                struct timespec t0, t1;
                clock_gettime(CLOCK_MONOTONIC, &t0);
                for (long k = 0; k < bench; k++)
                    phase_wasm_validate(buf, len, NULL, NULL, NULL, &info, err, sizeof err);
                clock_gettime(CLOCK_MONOTONIC, &t1);
                double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) /
                            (double)bench;
                if (us < best) best = us;
            }
            printf("bench %s: %zu bytes, %.2f us per validation (best of 5 x %ld)\n", argv[i], len, best, bench);
        }
        free(buf);
    }
    return status;
}
