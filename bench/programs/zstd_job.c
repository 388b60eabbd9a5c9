/* zstd -3 of stdin to stdout with zstd's streaming API: the benchmark's real-world job (bench/zstd_bench.py builds
 * it with the zstd sources of the pinned `zstandard` sdist, natively with gcc and for wasm32-wasi with zig). */
#include <stdio.h>
#include <stdlib.h>

#include "zstd.h"

int main(int argc, char **argv)
{
    int level = argc > 1 ? atoi(argv[1]) : 3;
    size_t in_cap = ZSTD_CStreamInSize(), out_cap = ZSTD_CStreamOutSize();
    char *in = malloc(in_cap), *out = malloc(out_cap);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    if (!in || !out || !cctx)
        return 2;
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
    for (;;) {
        size_t n = fread(in, 1, in_cap, stdin);
        ZSTD_EndDirective mode = n < in_cap ? ZSTD_e_end : ZSTD_e_continue;
        ZSTD_inBuffer input = {in, n, 0};
        int finished;
        do {
            ZSTD_outBuffer output = {out, out_cap, 0};
            size_t left = ZSTD_compressStream2(cctx, &output, &input, mode);
            if (ZSTD_isError(left)) {
                fprintf(stderr, "zstd: %s\n", ZSTD_getErrorName(left));
                return 1;
            }
            fwrite(out, 1, output.pos, stdout);
            finished = mode == ZSTD_e_end ? left == 0 : input.pos == input.size;
        } while (!finished);
        if (mode == ZSTD_e_end)
            break;
    }
    ZSTD_freeCCtx(cctx);
    return 0;
}
