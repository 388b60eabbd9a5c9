/* Phase's hello job: print the job input reversed (one trailing newline of the input is ignored). */
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    size_t cap = 4096, len = 0, n;
    char *buf = malloc(cap);
    if (!buf)
        return 1;
    while ((n = fread(buf + len, 1, cap - len, stdin)) > 0) {
        len += n;
        if (len == cap) {
            char *grown = realloc(buf, cap *= 2);
            if (!grown)
                return 1;
            buf = grown;
        }
    }
    if (len && buf[len - 1] == '\n')
        len--;
    for (size_t i = 0; i < len / 2; i++) {
        char c = buf[i];
        buf[i] = buf[len - 1 - i];
        buf[len - 1 - i] = c;
    }
    fwrite(buf, 1, len, stdout);
    free(buf);
    return 0;
}
