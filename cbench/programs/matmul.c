/* cbench: n x n matrix multiply in double (i-k-j order). Usage: matmul [n]   (default 256).
 * Prints the sum of C and an FNV-1a hash of C's bit patterns (x86-64 SSE2 and wasm both round each
 * operation to IEEE double, and neither contracts a*b+c into an FMA here, so the bits must agree). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 256;
    size_t cells = (size_t) (n > 0 ? n * n : 1);
    double *a = malloc(cells * sizeof *a), *b = malloc(cells * sizeof *b), *c = calloc(cells, sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (long i = 0; i < n; i++)
        for (long j = 0; j < n; j++) {
            a[i * n + j] = (double) ((i * 7 + j * 3) % 17) / 8.0 - 1.0;
            b[i * n + j] = (double) ((i * 5 + j * 11) % 13) / 3.0 + 0.25;
        }
    for (long i = 0; i < n; i++)
        for (long k = 0; k < n; k++) {
            double aik = a[i * n + k];
            for (long j = 0; j < n; j++)
                c[i * n + j] += aik * b[k * n + j];
        }
    double sum = 0;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < (size_t) (n * n); i++) {
        uint64_t bits;
        memcpy(&bits, &c[i], sizeof bits);
        h = (h ^ bits) * 1099511628211ull;
        sum += c[i];
    }
    printf("matmul(%ld) sum=%.17g fnv=%016llx\n", n, sum, (unsigned long long) h);
    free(a);
    free(b);
    free(c);
    return 0;
}
