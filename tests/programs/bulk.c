/* Writes BYTES bytes (argv[1]) of a repeating line to stdout, in pieces of 4 KiB: a job with a lot of output. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    long long want = argc > 1 ? atoll(argv[1]) : 1500000;
    char buf[4096];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (char) ('a' + i % 26);
    for (size_t i = 63; i < sizeof buf; i += 64)
        buf[i] = '\n';
    while (want > 0) {
        size_t n = want < (long long) sizeof buf ? (size_t) want : sizeof buf;
        if (fwrite(buf, 1, n, stdout) != n)
            return 3;
        want -= (long long) n;
    }
    return fflush(stdout) == 0 ? 0 : 4;
}
