/* phase-verify: check boot manifests and artifacts, and kexec only what was verified.
 *
 *   phase-verify manifest --key PUB [--min-release N] [--now UNIX] [--out DIR] MANIFEST
 *   phase-verify file --hash sha256:HEX --size N FILE
 *   phase-verify canon FILE                       (prints canonical bytes; for tests)
 *   phase-verify kexec --key PUB --manifest M --kernel K --initrd I
 *                      [--mode internet|local|private] [--socks IP:PORT] [--min-release N] [--now UNIX] [--exec]
 *                      [--dht HOST:PORT,...|off]   (phase.dht= for stage 2: the DHT nodes it joins through)
 *
 * Exit status: 0 verified, 1 refused (one line on stderr says why), 2 usage or system error. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/reboot.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bootmanifest.h"
#include "netconn.h"
#include "tools.h"

#define WHY 512
#define PHASE_DHT_ARG_MAX 512 /* phase.dht= passed on to stage 2 */

struct opts {
    const char *key, *manifest, *kernel, *initrd, *mode, *out, *hash, *socks, *dht;
    long long min_release, now, size;
    int exec, have_now;
};

static void usage(void)
{
    fprintf(stderr,
            "usage: phase-verify manifest --key PUB [--min-release N] [--now UNIX] [--out DIR] MANIFEST\n"
            "       phase-verify file --hash sha256:HEX --size N FILE\n"
            "       phase-verify canon FILE\n"
            "       phase-verify kexec --key PUB --manifest M --kernel K --initrd I [--mode MODE] [--socks IP:PORT]\n"
            "                          [--dht HOST:PORT,...|off] [--exec]\n");
}

static int parse_ll(const char *s, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !end || *end || end == s)
        return -1;
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"key", required_argument, 0, 'k'},      {"manifest", required_argument, 0, 'm'},
        {"kernel", required_argument, 0, 'K'},   {"initrd", required_argument, 0, 'i'},
        {"mode", required_argument, 0, 'M'},     {"out", required_argument, 0, 'o'},
        {"hash", required_argument, 0, 'H'},     {"size", required_argument, 0, 's'},
        {"min-release", required_argument, 0, 'r'}, {"now", required_argument, 0, 'n'},
        {"exec", no_argument, 0, 'e'},           {"help", no_argument, 0, 'h'},
        {"socks", required_argument, 0, 'S'},    {"dht", required_argument, 0, 'D'},
        {0, 0, 0, 0}};
    int c;
    memset(o, 0, sizeof *o);
    o->size = -1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'k': o->key = optarg; break;
        case 'm': o->manifest = optarg; break;
        case 'K': o->kernel = optarg; break;
        case 'i': o->initrd = optarg; break;
        case 'M': o->mode = optarg; break;
        case 'S': o->socks = optarg; break;
        case 'D': o->dht = optarg; break;
        case 'o': o->out = optarg; break;
        case 'H': o->hash = optarg; break;
        case 'e': o->exec = 1; break;
        case 's': if (parse_ll(optarg, &o->size)) return -1; break;
        case 'r': if (parse_ll(optarg, &o->min_release)) return -1; break;
        case 'n': if (parse_ll(optarg, &o->now)) return -1; o->have_now = 1; break;
        default: return -1;
        }
    }
    return 0;
}

static int load_and_verify(const struct opts *o, const char *path, struct phase_manifest *m)
{
    uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES];
    char why[WHY];
    size_t len = 0;
    if (!o->key) {
        fprintf(stderr, "phase-verify: --key is required\n");
        return 2;
    }
    if (phase_load_public_key(o->key, pk, why, sizeof why)) {
        fprintf(stderr, "phase-verify: release key: %s\n", why);
        return 2;
    }
    char *data = phase_read_file(path, PHASE_MANIFEST_MAX_BYTES, &len, why, sizeof why);
    if (!data) {
        fprintf(stderr, "phase-verify: manifest: %s\n", why);
        return 1;
    }
    long long now = o->have_now ? o->now : (long long)time(NULL);
    int rc = phase_manifest_verify(data, len, pk, now, o->min_release, m, why, sizeof why);
    free(data);
    if (rc) {
        fprintf(stderr, "phase-verify: manifest refused: %s\n", why);
        return 1;
    }
    return 0;
}

static int write_field(const char *dir, const char *name, const char *value)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%s\n", value) < 0 || fclose(f) != 0) {
        fprintf(stderr, "phase-verify: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int cmd_manifest(int argc, char **argv)
{
    struct opts o;
    struct phase_manifest m;
    char num[32];
    if (parse_opts(argc, argv, &o) || optind != argc - 1) {
        usage();
        return 2;
    }
    int rc = load_and_verify(&o, argv[optind], &m);
    if (rc)
        return rc;
    if (o.out) {
        if (mkdir(o.out, 0700) && errno != EEXIST) {
            fprintf(stderr, "phase-verify: cannot create %s: %s\n", o.out, strerror(errno));
            return 2;
        }
        int bad = write_field(o.out, "kernel.hash", m.kernel.hash) ||
                  write_field(o.out, "initramfs.hash", m.initramfs.hash) ||
                  write_field(o.out, "cmdline", m.cmdline) || write_field(o.out, "arch", m.arch);
        snprintf(num, sizeof num, "%lld", m.kernel.size);
        bad = bad || write_field(o.out, "kernel.size", num);
        snprintf(num, sizeof num, "%lld", m.initramfs.size);
        bad = bad || write_field(o.out, "initramfs.size", num);
        snprintf(num, sizeof num, "%lld", m.release);
        bad = bad || write_field(o.out, "release", num);
        snprintf(num, sizeof num, "%lld", m.expires_at);
        bad = bad || write_field(o.out, "expires_at", num);
        if (bad)
            return 2;
    }
    printf("manifest ok: release %lld %s expires_at %lld kernel %s %lld initramfs %s %lld\n", m.release, m.arch,
           m.expires_at, m.kernel.hash, m.kernel.size, m.initramfs.hash, m.initramfs.size);
    return 0;
}

/* Copy path into a sealed memfd and check it against a. Returns the memfd, -1 if refused.
 * Why a sealed copy: the bytes hashed must be the bytes the kernel loads. Once sealed
 * (no write, grow or shrink), nothing -- not even root -- can change them between the
 * hash and kexec_file_load, which reads the same fd. */
static int sealed_verified_copy(const char *role, const char *path, const struct phase_artifact *a)
{
    int src = open(path, O_RDONLY | O_CLOEXEC);
    if (src < 0) {
        fprintf(stderr, "phase-verify: %s: cannot open %s: %s\n", role, path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(src, &st) || !S_ISREG(st.st_mode) || st.st_size != a->size) {
        fprintf(stderr, "phase-verify: %s: size mismatch: %s has %lld bytes, manifest says %lld\n", role, path,
                (long long)st.st_size, a->size);
        close(src);
        return -1;
    }
    int fd = memfd_create(role, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        fprintf(stderr, "phase-verify: %s: memfd_create: %s\n", role, strerror(errno));
        close(src);
        return -1;
    }
    char buf[1 << 16];
    long long total = 0;
    for (;;) {
        ssize_t r = read(src, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "phase-verify: %s: read: %s\n", role, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        if (total + r > a->size) {
            fprintf(stderr, "phase-verify: %s: size mismatch: %s grew past %lld bytes\n", role, path, a->size);
            goto fail;
        }
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(fd, buf + off, (size_t)(r - off));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                fprintf(stderr, "phase-verify: %s: memfd write: %s\n", role, strerror(errno));
                goto fail;
            }
            off += w;
        }
        total += r;
    }
    if (total != a->size) {
        fprintf(stderr, "phase-verify: %s: size mismatch: read %lld bytes, manifest says %lld\n", role, total, a->size);
        goto fail;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
        fprintf(stderr, "phase-verify: %s: cannot seal: %s\n", role, strerror(errno));
        goto fail;
    }
    void *map = mmap(NULL, (size_t)a->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        fprintf(stderr, "phase-verify: %s: mmap: %s\n", role, strerror(errno));
        goto fail;
    }
    uint8_t digest[PHASE_SHA256_BYTES];
    char text[PHASE_HASH_TEXT_BYTES];
    phase_sha256(map, (size_t)a->size, digest);
    munmap(map, (size_t)a->size);
    if (sodium_memcmp(digest, a->digest, sizeof digest) != 0) {
        phase_hash_text(digest, text);
        fprintf(stderr, "phase-verify: %s: hash mismatch: got %s, manifest says %s\n", role, text, a->hash);
        goto fail;
    }
    close(src);
    return fd;
fail:
    close(src);
    close(fd);
    return -1;
}

static int cmd_file(int argc, char **argv)
{
    struct opts o;
    struct phase_artifact a;
    if (parse_opts(argc, argv, &o) || optind != argc - 1 || !o.hash || o.size < 1 ||
        phase_hash_parse(o.hash, strlen(o.hash), a.digest)) {
        usage();
        return 2;
    }
    snprintf(a.hash, sizeof a.hash, "%s", o.hash);
    a.size = o.size;
    int fd = sealed_verified_copy("file", argv[optind], &a);
    if (fd < 0)
        return 1;
    close(fd);
    printf("file ok: %s %lld\n", a.hash, a.size);
    return 0;
}

static int cmd_canon(int argc, char **argv)
{
    char why[WHY], *out = NULL;
    size_t len = 0, outlen = 0;
    if (argc != 3) {
        usage();
        return 2;
    }
    char *data = phase_read_file(argv[2], 1 << 24, &len, why, sizeof why);
    if (!data || phase_canonical_of(data, len, &out, &outlen, why, sizeof why)) {
        fprintf(stderr, "phase-verify: %s\n", why);
        free(data);
        return 1;
    }
    fwrite(out, 1, outlen, stdout);
    free(out);
    free(data);
    return 0;
}

/* The DHT nodes stage 2 joins through (the ones stage 1 used): "off", or HOST:PORT items of a fixed
 * alphabet, so that nothing but a phase.dht= value can reach the kernel command line. */
static int dht_list_ok(const char *s)
{
    size_t n = strlen(s);
    if (!strcmp(s, "off"))
        return 1;
    if (n == 0 || n > PHASE_DHT_ARG_MAX)
        return 0;
    for (const char *p = s; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr(".-:,[]", *p)))
            return 0;
    return 1;
}

/* kexec-tools (Debian's kexec-tools, carried by the aarch64 stage 1): the kexec_load(2) path. */
#define PHASE_KEXEC_TOOL "/sbin/kexec"

/* Load the sealed, verified copies with kexec_load(2) through kexec-tools, for kernels without
 * kexec_file_load. kexec reads the kernel and initramfs from the sealed memfds themselves (inherited
 * as fds 3 and 4, opened as /proc/self/fd/N): the bytes it loads are the bytes hashed, exactly as
 * with kexec_file_load. It adds the purgatory and the device tree, which kexec_load leaves to user space. */
static int kexec_load_sealed(int kfd, int ifd, const char *cmdline)
{
    char cmdarg[PHASE_CMDLINE_MAX + 128 + PHASE_DHT_ARG_MAX + 32];
    snprintf(cmdarg, sizeof cmdarg, "--command-line=%s", cmdline);
    char *const argv[] = {"kexec", "--kexec-syscall", "--load", "/proc/self/fd/3", "--initrd=/proc/self/fd/4",
                          cmdarg, NULL};
    char *const envp[] = {"PATH=/bin:/sbin", NULL};
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        fprintf(stderr, "phase-verify: kexec_load: pipe: %s\n", strerror(errno));
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "phase-verify: kexec_load: fork: %s\n", strerror(errno));
        close(out[0]);
        close(out[1]);
        return -1;
    }
    if (pid == 0) {
        /* Moved above 4 first, so that dup2 onto 3 and 4 never lands on itself (dup2 clears FD_CLOEXEC). */
        int k = fcntl(kfd, F_DUPFD_CLOEXEC, 10), i = fcntl(ifd, F_DUPFD_CLOEXEC, 10);
        if (k < 0 || i < 0 || dup2(k, 3) < 0 || dup2(i, 4) < 0 || dup2(out[1], 2) < 0 || dup2(out[1], 1) < 0)
            _exit(126);
        execve(PHASE_KEXEC_TOOL, argv, envp);
        fprintf(stderr, "cannot run %s: %s\n", PHASE_KEXEC_TOOL, strerror(errno));
        _exit(127);
    }
    close(out[1]);
    /* What kexec says goes to stderr as it comes; its last line (bounded) names the reason of a failure. */
    char buf[4096], last[256] = "";
    size_t lastlen = 0;
    int fresh = 1;
    for (;;) {
        ssize_t r = read(out[0], buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        fwrite(buf, 1, (size_t)r, stderr);
        for (ssize_t j = 0; j < r; j++) {
            if (buf[j] == '\n') {
                fresh = 1;
                continue;
            }
            if (fresh) {
                lastlen = 0;
                fresh = 0;
            }
            if (lastlen < sizeof last - 1)
                last[lastlen++] = isprint((unsigned char)buf[j]) ? buf[j] : '?';
            last[lastlen] = '\0';
        }
    }
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "phase-verify: kexec_load: waitpid: %s\n", strerror(errno));
            return -1;
        }
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "phase-verify: kexec_load: %s failed (status %d)%s%s\n", PHASE_KEXEC_TOOL,
                WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), lastlen ? ": " : "", last);
        return -1;
    }
    return 0;
}

#if defined(__x86_64__)
#define MACHINE_ARCH "x86_64"
#elif defined(__aarch64__)
#define MACHINE_ARCH "aarch64"
#else
#error "verify.c: add this architecture's manifest arch"
#endif

static int cmd_kexec(int argc, char **argv)
{
    struct opts o;
    struct phase_manifest m;
    char cmdline[PHASE_CMDLINE_MAX + 128 + PHASE_DHT_ARG_MAX];
    if (parse_opts(argc, argv, &o) || optind != argc || !o.manifest || !o.kernel || !o.initrd) {
        usage();
        return 2;
    }
    /* Only phase.mode and phase.socks may be added to the signed command line, and only
     * values of a fixed shape: anything freer (init=, rdinit=) would let an unsigned input
     * pick what runs. */
    if (o.mode && strcmp(o.mode, "internet") && strcmp(o.mode, "local") && strcmp(o.mode, "private")) {
        fprintf(stderr, "phase-verify: --mode must be internet, local or private\n");
        return 2;
    }
    struct sockaddr_storage proxy;
    socklen_t proxylen;
    if (o.socks && (strlen(o.socks) > 60 || phase_parse_ip_port(o.socks, &proxy, &proxylen))) {
        fprintf(stderr, "phase-verify: --socks must be IP:PORT\n");
        return 2;
    }
    if (o.dht && !dht_list_ok(o.dht)) {
        fprintf(stderr, "phase-verify: --dht must be off or HOST:PORT[,HOST:PORT...] (names, IPv4, [IPv6])\n");
        return 2;
    }
    long long t0 = phase_now_ms();
    int rc = load_and_verify(&o, o.manifest, &m);
    if (rc)
        return rc;
    if (strcmp(m.arch, MACHINE_ARCH) != 0) {
        fprintf(stderr, "phase-verify: arch: the manifest is for %s, this machine is %s\n", m.arch, MACHINE_ARCH);
        return 2;
    }
    int kfd = sealed_verified_copy("kernel", o.kernel, &m.kernel);
    if (kfd < 0)
        return 1;
    int ifd = sealed_verified_copy("initramfs", o.initrd, &m.initramfs);
    if (ifd < 0) {
        close(kfd);
        return 1;
    }
    long long t1 = phase_now_ms();
    snprintf(cmdline, sizeof cmdline, "%s%s%s%s%s%s%s", m.cmdline, o.mode ? " phase.mode=" : "", o.mode ? o.mode : "",
             o.socks ? " phase.socks=" : "", o.socks ? o.socks : "", o.dht ? " phase.dht=" : "", o.dht ? o.dht : "");
    printf("PHASE-BOOT: verified: release %lld kernel %s initramfs %s (%lld bytes) in %lld ms\n", m.release, m.kernel.hash,
           m.initramfs.hash, m.kernel.size + m.initramfs.size, t1 - t0);
    fflush(stdout);
    if (syscall(SYS_kexec_file_load, kfd, ifd, strlen(cmdline) + 1, cmdline, 0UL) != 0) {
        if (errno != ENOSYS) {
            fprintf(stderr, "phase-verify: kexec_file_load: %s\n", strerror(errno));
            return 2;
        }
        /* e.g. Debian's arm64 kernels: built without CONFIG_KEXEC_FILE, but with CONFIG_KEXEC */
        if (access(PHASE_KEXEC_TOOL, X_OK) != 0) {
            fprintf(stderr, "phase-verify: kexec_file_load: this kernel has no kexec_file_load (CONFIG_KEXEC_FILE) "
                            "and this image has no %s for kexec_load\n", PHASE_KEXEC_TOOL);
            return 2;
        }
        printf("PHASE-BOOT: no kexec_file_load in this kernel (CONFIG_KEXEC_FILE): loading the sealed copies with "
               "kexec_load through %s\n", PHASE_KEXEC_TOOL);
        if (kexec_load_sealed(kfd, ifd, cmdline))
            return 2;
    }
    printf("PHASE-BOOT: kexec loaded: cmdline \"%s\"\n", cmdline);
    fflush(stdout);
    if (o.exec) {
        sync();
        reboot(LINUX_REBOOT_CMD_KEXEC);
        fprintf(stderr, "phase-verify: kexec reboot: %s\n", strerror(errno));
        return 2;
    }
    return 0;
}

int phase_verify_main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "manifest") == 0) return cmd_manifest(argc - 1, argv + 1);
    if (strcmp(cmd, "file") == 0) return cmd_file(argc - 1, argv + 1);
    if (strcmp(cmd, "canon") == 0) return cmd_canon(argc, argv);
    if (strcmp(cmd, "kexec") == 0) return cmd_kexec(argc - 1, argv + 1);
    usage();
    return 2;
}
