/* File-system benchmark workloads (bench/fs_bench.py), through wasi-libc as ordinary programs do.
 *
 * read DIR: reads every file of DIR (readdir order) in 64 KiB chunks; prints the file count, bytes and a sum.
 * small DIR N: open + read + close of DIR/f00000 ... DIR/f<N-1> (names made here: no readdir); prints the bytes.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char buf[1 << 16];

static int read_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return 1;
    }
    unsigned long long files = 0, bytes = 0, sum = 0;
    char path[4096];
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            perror(path);
            return 1;
        }
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0) {
            bytes += (unsigned long long) n;
            sum += buf[0] + buf[n - 1];
        }
        close(fd);
        files++;
    }
    closedir(d);
    printf("files %llu bytes %llu sum %llu\n", files, bytes, sum);
    return 0;
}

static int small_files(const char *dir, int count)
{
    unsigned long long bytes = 0;
    char path[4096];
    for (int i = 0; i < count; i++) {
        snprintf(path, sizeof path, "%s/f%05d", dir, i);
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            perror(path);
            return 1;
        }
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            bytes += (unsigned long long) n;
        close(fd);
    }
    printf("bytes %llu\n", bytes);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "read") == 0)
        return read_tree(argv[2]);
    if (argc == 4 && strcmp(argv[1], "small") == 0)
        return small_files(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage: fs_bench read DIR | small DIR N\n");
    return 2;
}
