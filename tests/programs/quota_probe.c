/* The scratch quota seen from a job (tests/core/test_fs_quota.py), through wasi-libc as ordinary programs do.
 * Commands run in order, each one line of output: the command's name, then "ok" or the errno's name, then any
 * numbers it reports.
 *   fill PATH N         create or replace PATH with N bytes in 64 KiB writes: "fill ERR WRITTEN"
 *   append PATH N       N more bytes at the end of PATH (O_APPEND): "append ERR WRITTEN"
 *   pwrite PATH OFF     one byte at OFF (a hole before it): "pwrite ERR"
 *   allocate PATH OFF LEN   posix_fallocate (fd_allocate): "allocate ERR"
 *   truncate PATH SIZE  ftruncate (fd_filestat_set_size): "truncate ERR"
 *   touch PATH          create PATH empty: "touch ERR"
 *   mkdir PATH / rmdir PATH / rm PATH: "mkdir ERR" ...
 *   symlink TARGET PATH / link OLD NEW / mv OLD NEW: "symlink ERR" ...
 *   files PREFIX N      create PREFIX0, PREFIX1, ... until N or an error: "files ERR MADE"
 *   hold PATH           open PATH read-write and keep it (one at a time): "hold ERR"
 *   hfill N             N more bytes through the held descriptor: "hfill ERR WRITTEN"
 *   close               close the held descriptor: "close ERR"
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned char buf[1 << 16];
static int held = -1;

static const char *err_name(int ok)
{
    if (ok)
        return "ok";
    switch (errno) {
    case EDQUOT: return "EDQUOT";
    case ENOSPC: return "ENOSPC";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    case EFBIG: return "EFBIG";
    default: return strerror(errno);
    }
}

/* n bytes through fd; how many went, errno set when short. */
static long long put(int fd, long long n)
{
    long long done = 0;
    while (done < n) {
        size_t want = n - done < (long long) sizeof buf ? (size_t) (n - done) : sizeof buf;
        ssize_t w = write(fd, buf, want);
        if (w <= 0)
            return done;
        done += w;
    }
    errno = 0;
    return done;
}

static void fill(const char *cmd, const char *path, long long n, int flags)
{
    int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);
    if (fd < 0) {
        printf("%s %s 0\n", cmd, err_name(0));
        return;
    }
    long long done = put(fd, n);
    printf("%s %s %lld\n", cmd, err_name(done == n), done);
    close(fd);
}

int main(int argc, char **argv)
{
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char) i;
    for (int i = 1; i < argc; i++) {
        const char *c = argv[i];
        const char *a = i + 1 < argc ? argv[i + 1] : "", *b = i + 2 < argc ? argv[i + 2] : "";
        if (!strcmp(c, "fill")) {
            fill(c, a, atoll(b), O_TRUNC);
            i += 2;
        } else if (!strcmp(c, "append")) {
            fill(c, a, atoll(b), O_APPEND);
            i += 2;
        } else if (!strcmp(c, "pwrite")) {
            int fd = open(a, O_WRONLY | O_CREAT, 0644);
            printf("pwrite %s\n", err_name(fd >= 0 && pwrite(fd, "x", 1, atoll(b)) == 1));
            close(fd);
            i += 2;
        } else if (!strcmp(c, "allocate")) {
            int fd = open(a, O_WRONLY | O_CREAT, 0644);
            int e = fd < 0 ? errno : posix_fallocate(fd, atoll(b), atoll(argv[i + 3]));
            errno = e;
            printf("allocate %s\n", err_name(e == 0));
            close(fd);
            i += 3;
        } else if (!strcmp(c, "truncate")) {
            int fd = open(a, O_WRONLY | O_CREAT, 0644);
            printf("truncate %s\n", err_name(fd >= 0 && ftruncate(fd, atoll(b)) == 0));
            close(fd);
            i += 2;
        } else if (!strcmp(c, "touch")) {
            int fd = open(a, O_WRONLY | O_CREAT, 0644);
            printf("touch %s\n", err_name(fd >= 0));
            close(fd);
            i += 1;
        } else if (!strcmp(c, "mkdir")) {
            printf("mkdir %s\n", err_name(mkdir(a, 0755) == 0));
            i += 1;
        } else if (!strcmp(c, "rmdir")) {
            printf("rmdir %s\n", err_name(rmdir(a) == 0));
            i += 1;
        } else if (!strcmp(c, "rm")) {
            printf("rm %s\n", err_name(unlink(a) == 0));
            i += 1;
        } else if (!strcmp(c, "symlink")) {
            printf("symlink %s\n", err_name(symlink(a, b) == 0));
            i += 2;
        } else if (!strcmp(c, "link")) {
            printf("link %s\n", err_name(link(a, b) == 0));
            i += 2;
        } else if (!strcmp(c, "mv")) {
            printf("mv %s\n", err_name(rename(a, b) == 0));
            i += 2;
        } else if (!strcmp(c, "files")) {
            long long n = atoll(b), made = 0;
            char name[4096];
            int ok = 1;
            for (; made < n; made++) {
                snprintf(name, sizeof name, "%s%lld", a, made);
                int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
                if (fd < 0) {
                    ok = 0;
                    break;
                }
                close(fd);
            }
            printf("files %s %lld\n", err_name(ok), made);
            i += 2;
        } else if (!strcmp(c, "hold")) {
            held = open(a, O_RDWR | O_APPEND);
            printf("hold %s\n", err_name(held >= 0));
            i += 1;
        } else if (!strcmp(c, "hfill")) {
            long long n = atoll(a), done = put(held, n);
            printf("hfill %s %lld\n", err_name(done == n), done);
            i += 1;
        } else if (!strcmp(c, "close")) {
            printf("close %s\n", err_name(close(held) == 0));
            held = -1;
        } else {
            printf("unknown command %s\n", c);
            return 2;
        }
    }
    return 0;
}
