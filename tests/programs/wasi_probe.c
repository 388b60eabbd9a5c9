/* One test program, many behaviours: argv[1] picks what it exercises. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wasi/api.h>

extern char **environ;

static int cat(void)
{
    static char buf[65536];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        fwrite(buf, 1, n, stdout);
        total += n;
    }
    fprintf(stderr, "%zu\n", total);
    return 0;
}

static volatile uint64_t sink;
static char *volatile keep;   /* so the compiler cannot drop allocations */

static uint64_t recurse(uint64_t n)
{
    volatile char pad[64];
    pad[0] = (char) n;
    return n == 0 ? pad[0] : recurse(n - 1) + pad[0];
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "args")) {
        for (int i = 0; i < argc; i++)
            printf("%d:%s\n", i, argv[i]);
    } else if (!strcmp(mode, "env")) {
        for (char **e = environ; *e; e++)
            printf("%s\n", *e);
    } else if (!strcmp(mode, "cat")) {
        return cat();
    } else if (!strcmp(mode, "stderr")) {
        fprintf(stderr, "to stderr");
        printf("to stdout");
    } else if (!strcmp(mode, "exit")) {
        printf("before exit");
        fflush(stdout);
        exit(argc > 2 ? atoi(argv[2]) : 0);
    } else if (!strcmp(mode, "return")) {
        return argc > 2 ? atoi(argv[2]) : 0;
    } else if (!strcmp(mode, "clock")) {
        struct timespec rt, mono, res;
        clock_gettime(CLOCK_REALTIME, &rt);
        clock_gettime(CLOCK_MONOTONIC, &mono);
        clock_getres(CLOCK_MONOTONIC, &res);
        unsigned char rnd[16];
        if (getentropy(rnd, sizeof rnd) != 0)
            return 3;
        printf("realtime %lld.%09ld\nmonotonic %lld.%09ld\nres %ld\nrandom ", (long long) rt.tv_sec, rt.tv_nsec,
               (long long) mono.tv_sec, mono.tv_nsec, res.tv_nsec);
        for (size_t i = 0; i < sizeof rnd; i++)
            printf("%02x", rnd[i]);
        printf("\n");
    } else if (!strcmp(mode, "sleep")) {
        struct timespec a, b, d = {0, 20 * 1000 * 1000};
        clock_gettime(CLOCK_MONOTONIC, &a);
        nanosleep(&d, NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
        printf("slept %s\n", ns >= 20 * 1000 * 1000 ? "enough" : "too little");
    } else if (!strcmp(mode, "yield")) {
        printf("sched_yield %d\n", __wasi_sched_yield());
    } else if (!strcmp(mode, "poll")) {
        __wasi_subscription_t sub[2];
        __wasi_event_t ev[2];
        __wasi_size_t n = 0;
        memset(sub, 0, sizeof sub);
        sub[0].userdata = 7;
        sub[0].u.tag = __WASI_EVENTTYPE_FD_READ;
        sub[0].u.u.fd_read.file_descriptor = 0;
        sub[1].userdata = 9;
        sub[1].u.tag = __WASI_EVENTTYPE_FD_WRITE;
        sub[1].u.u.fd_write.file_descriptor = 1;
        int rc = __wasi_poll_oneoff(sub, ev, 2, &n);
        printf("poll %d n=%u ud=%llu,%llu nbytes=%llu\n", rc, (unsigned) n, (unsigned long long) ev[0].userdata,
               (unsigned long long) ev[1].userdata, (unsigned long long) ev[0].fd_readwrite.nbytes);
    } else if (!strcmp(mode, "files")) {
        __wasi_prestat_t pre;
        int rc = __wasi_fd_prestat_get(3, &pre);
        FILE *f = fopen("/etc/passwd", "r");
        printf("prestat %d fopen %s\n", rc, f ? "opened" : "failed");
    } else if (!strcmp(mode, "fdstat")) {
        __wasi_fdstat_t st;
        int r0 = __wasi_fd_fdstat_get(0, &st);
        int r9 = __wasi_fd_fdstat_get(9, &st);
        off_t off = lseek(0, 0, SEEK_CUR);
        int rbad = __wasi_fd_close(9);
        printf("fdstat0 %d fdstat9 %d lseek %lld close9 %d", r0, r9, (long long) off, rbad);
        fflush(stdout);
        /* stdout closed is closed: writing to it is EBADF, closing it again too (told on stderr) */
        int rc = __wasi_fd_close(1);
        __wasi_ciovec_t iov = {(const uint8_t *) "lost", 4};
        __wasi_size_t n;
        int rw = __wasi_fd_write(1, &iov, 1, &n);
        fprintf(stderr, "close1 %d write1 %d close1 %d", rc, rw, __wasi_fd_close(1));
    } else if (!strcmp(mode, "badptr")) {
        __wasi_ciovec_t iov = {(const uint8_t *) 0xfffffff0u, 64};
        __wasi_size_t n;
        int rc = __wasi_fd_write(1, &iov, 1, &n);
        printf("fd_write with a bad pointer: %d", rc);
    } else if (!strcmp(mode, "flood")) {
        static char line[4096];
        memset(line, 'x', sizeof line);
        for (;;)
            fwrite(line, 1, sizeof line, stdout);
    } else if (!strcmp(mode, "spin")) {
        for (uint64_t i = 0;; i++)
            sink = i;
    } else if (!strcmp(mode, "count")) {
        uint64_t n = argc > 2 ? strtoull(argv[2], 0, 10) : 1000;
        for (uint64_t i = 0; i < n; i++)
            sink += i;
        printf("%llu", (unsigned long long) sink);
    } else if (!strcmp(mode, "recurse")) {
        printf("%llu", (unsigned long long) recurse(argc > 2 ? strtoull(argv[2], 0, 10) : 100000000ull));
    } else if (!strcmp(mode, "grow")) {
        size_t total = 0;
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) {
                fprintf(stderr, "malloc failed after %zu MiB\n", total);
                abort();
            }
            p[0] = 1;
            keep = p;
            total++;
        }
    } else if (!strcmp(mode, "touch")) {
        size_t mib = argc > 2 ? strtoull(argv[2], 0, 10) : 8;
        char *p = malloc(mib << 20);
        if (!p)
            return 2;
        memset(p, 1, mib << 20);
        printf("touched %zu MiB", mib);
    } else {
        fprintf(stderr, "unknown mode '%s'\n", mode);
        return 64;
    }
    return 0;
}
