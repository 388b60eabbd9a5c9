/* ROUNDS rounds of WORK xorshift steps (argv[1], argv[2]); after each round one line "round I HEX" is written and
 * flushed: a compute-bound long job whose progress a reader sees as it runs (tests/test_long_job.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 10;
    uint64_t work = argc > 2 ? strtoull(argv[2], 0, 10) : 1000000;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (long r = 0; r < rounds; r++) {
        for (uint64_t i = 0; i < work; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        printf("round %ld %016llx\n", r, (unsigned long long) x);
        fflush(stdout);
    }
    return 0;
}
