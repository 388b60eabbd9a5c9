/* A remote job with directories (tests/net/test_trees.py), through wasi-libc as ordinary programs do.
 * Commands run in order, each one line of output:
 *   read DIR            every file beneath DIR, in name order: "read FILES BYTES SUM" (SUM: FNV-1a of the first
 *                       and last byte of each 64 KiB read, cheap enough for 100 MB in an interpreter)
 *   list DIR            every path beneath DIR, one per line, then "end"
 *   write PATH TEXT     create or replace PATH with TEXT: "wrote PATH" or "write PATH: error"
 *   fill PATH N         PATH with N bytes (0..255 repeating): "filled PATH" or "fill PATH: error"
 *   mkdir PATH          "made PATH" or "mkdir PATH: error"
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned char buf[1 << 16];
static unsigned long long files, bytes, sum = 1469598103934665603ull;

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Names of DIR's entries, sorted (the readdir order is the file system's business). */
static int names(const char *dir, char ***out)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0, cap = 16;
    char **list = malloc(cap * sizeof *list);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (n == cap)
            list = realloc(list, (cap *= 2) * sizeof *list);
        list[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(list, n, sizeof *list, by_name);
    *out = list;
    return n;
}

static int walk(const char *dir, int print)
{
    char **list;
    int n = names(dir, &list);
    if (n < 0) {
        printf("cannot open %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char path[4096];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, list[i]);
        struct stat st;
        if (lstat(path, &st) != 0)
            continue;
        if (print)
            printf("%s\n", path);
        if (S_ISDIR(st.st_mode)) {
            walk(path, print);
        } else if (S_ISREG(st.st_mode) && !print) {
            int fd = open(path, O_RDONLY);
            if (fd < 0) {
                printf("cannot open %s: %s\n", path, strerror(errno));
                continue;
            }
            ssize_t got;
            while ((got = read(fd, buf, sizeof buf)) > 0) {
                bytes += (unsigned long long) got;
                sum = (sum ^ buf[0]) * 1099511628211ull;
                sum = (sum ^ buf[got - 1]) * 1099511628211ull;
            }
            close(fd);
            files++;
        }
        free(list[i]);
    }
    free(list);
    return 0;
}

static int put(const char *path, const char *text, long long n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    if (text) {
        if (write(fd, text, strlen(text)) < 0)
            return -1;
    } else {
        for (long long i = 0; i < (long long) sizeof buf; i++)
            buf[i] = (unsigned char) i;
        while (n > 0) {
            ssize_t w = write(fd, buf, n < (long long) sizeof buf ? (size_t) n : sizeof buf);
            if (w <= 0)
                return -1;
            n -= w;
        }
    }
    return close(fd);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "read") && i + 1 < argc) {
            files = bytes = 0;
            sum = 1469598103934665603ull;
            walk(argv[++i], 0);
            printf("read %llu %llu %016llx\n", files, bytes, sum);
        } else if (!strcmp(argv[i], "list") && i + 1 < argc) {
            walk(argv[++i], 1);
            printf("end\n");
        } else if (!strcmp(argv[i], "write") && i + 2 < argc) {
            const char *path = argv[++i], *text = argv[++i];
            if (put(path, text, 0) == 0)
                printf("wrote %s\n", path);
            else
                printf("write %s: %s\n", path, strerror(errno));
        } else if (!strcmp(argv[i], "fill") && i + 2 < argc) {
            const char *path = argv[++i];
            long long n = atoll(argv[++i]);
            if (put(path, NULL, n) == 0)
                printf("filled %s\n", path);
            else
                printf("fill %s: %s\n", path, strerror(errno));
        } else if (!strcmp(argv[i], "mkdir") && i + 1 < argc) {
            const char *path = argv[++i];
            if (mkdir(path, 0755) == 0)
                printf("made %s\n", path);
            else
                printf("mkdir %s: %s\n", path, strerror(errno));
        } else {
            printf("unknown command %s\n", argv[i]);
            return 2;
        }
    }
    return 0;
}
