/* cbench: recursive Fibonacci (call-heavy). Usage: fib [n]   (default 32). Prints "fib(n) = value". */
#include <stdio.h>
#include <stdlib.h>

static unsigned fib(unsigned n)
{
    return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

int main(int argc, char **argv)
{
    /* n from argv so no compiler can fold the answer at build time. */
    unsigned n = argc > 1 ? (unsigned) strtoul(argv[1], NULL, 10) : 32;
    printf("fib(%u) = %u\n", n, fib(n));
    return 0;
}
