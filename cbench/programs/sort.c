/* cbench: sort n 32-bit ints with our own introsort-style quicksort (the same code natively and in wasm,
 * so libc's qsort does not decide the result). Usage: sort [n]   (default 4194304 = 4Mi).
 * Prints a checksum of the sorted array and whether it is sorted. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void insertion(int32_t *a, long n)
{
    for (long i = 1; i < n; i++) {
        int32_t v = a[i];
        long j = i - 1;
        while (j >= 0 && a[j] > v) {
            a[j + 1] = a[j];
            j--;
        }
        a[j + 1] = v;
    }
}

static void quicksort(int32_t *a, long n)
{
    while (n > 24) {
        /* median of three as the pivot */
        long m = n / 2;
        int32_t x = a[0], y = a[m], z = a[n - 1];
        int32_t p = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        long i = 0, j = n - 1;
        for (;;) {
            while (a[i] < p) i++;
            while (a[j] > p) j--;
            if (i >= j) break;
            int32_t t = a[i]; a[i] = a[j]; a[j] = t;
            i++; j--;
        }
        /* recurse into the smaller side, loop on the larger: stack depth stays O(log n) */
        long left = j + 1, right = n - j - 1;
        if (left < right) {
            quicksort(a, left);
            a += left;
            n = right;
        } else {
            quicksort(a + left, right);
            n = left;
        }
    }
    insertion(a, n);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 4194304L;
    int32_t *a = malloc((size_t) (n > 0 ? n : 1) * sizeof *a);
    if (!a) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    uint32_t x = 88172645u;
    for (long i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        a[i] = (int32_t) x;
    }
    quicksort(a, n);
    int sorted = 1;
    uint64_t sum = 0;
    for (long i = 0; i < n; i++) {
        if (i && a[i - 1] > a[i])
            sorted = 0;
        sum = sum * 1000003u + (uint32_t) a[i];
    }
    printf("sort(%ld) sorted=%d checksum=%016llx\n", n, sorted, (unsigned long long) sum);
    free(a);
    return sorted ? 0 : 1;
}
