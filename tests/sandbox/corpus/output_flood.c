/* Writes to stdout and stderr forever: must end in output_limit, with the output kept up to the limit. */
#include <stdio.h>
#include <string.h>

int main(void)
{
    static char buf[65536];
    memset(buf, 'A', sizeof buf);
    for (;;) {
        fwrite(buf, 1, sizeof buf, stdout);
        fwrite(buf, 1, 100, stderr);
    }
}
