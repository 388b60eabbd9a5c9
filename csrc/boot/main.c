/* phase-boot: one static binary for stage 1, called by the names phase-verify, phase-fetch,
 * phase-discover and phase-dht (symlinks), or as `phase-boot verify|fetch|discover ...`. One binary keeps
 * stage 1 small: static glibc, libsodium and jansson are carried once. */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "../phase_crypto.h"
#include "tools.h"

long long phase_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Why a custom randombytes: sodium_init() stirs the default generator, which calls
 * getrandom() and blocks until the kernel's pool is initialised, about a second into a
 * QEMU boot with no hardware RNG. Our tools only hash and verify signatures, which use
 * no randomness; libsodium itself only draws a canary for its guarded allocator, which we
 * never use. So the implementation below never blocks: it asks the kernel without
 * waiting and, if the pool is not ready, settles for a non-secret fill. Nothing that needs
 * secret randomness (keys, signatures, nonces) may ever be made with this binary. */
static const char *rb_name(void) { return "phase-verify-nonblocking"; }

static void rb_buf(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = getrandom(p, n, GRND_NONBLOCK);
        if (r <= 0)
            break;
        p += r;
        n -= (size_t)r;
    }
    if (n) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        unsigned long long x = (unsigned long long)ts.tv_nsec * 0x9E3779B97F4A7C15ULL ^ (unsigned long long)getpid();
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            p[i] = (unsigned char)x;
        }
    }
}

static uint32_t rb_random(void)
{
    uint32_t v;
    rb_buf(&v, sizeof v);
    return v;
}

static struct randombytes_implementation nonblocking = {
    .implementation_name = rb_name, .random = rb_random, .stir = NULL, .uniform = NULL, .buf = rb_buf, .close = NULL,
};

int phase_boot_crypto_init(void)
{
    if (randombytes_set_implementation(&nonblocking) != 0)
        return -1;
    return phase_crypto_init();
}

int main(int argc, char **argv)
{
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    if (strcmp(name, "phase-boot") == 0 && argc > 1) {
        static char buf[64];
        snprintf(buf, sizeof buf, "phase-%s", argv[1]);
        name = buf;
        argv++;
        argc--;
    }
    if (phase_boot_crypto_init() != 0) {
        fprintf(stderr, "%s: libsodium cannot start\n", name);
        return 2;
    }
    if (strcmp(name, "phase-verify") == 0)
        return phase_verify_main(argc, argv);
    if (strcmp(name, "phase-fetch") == 0)
        return phase_fetch_main(argc, argv);
    if (strcmp(name, "phase-discover") == 0)
        return phase_discover_main(argc, argv);
    if (strcmp(name, "phase-dht") == 0)
        return phase_dht_main(argc, argv);
    fprintf(stderr, "usage: phase-boot verify|fetch|discover|dht ... (or call as phase-verify, phase-fetch, phase-discover, phase-dht)\n");
    return 2;
}
