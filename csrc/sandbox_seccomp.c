/* The worker's seccomp filter: a small allow-list of rules, turned into classic BPF here rather than by
 * libseccomp (no build dependency, and the whole policy fits on one screen).
 *
 * Allowed is exactly what running a job needs once the worker has read its request: reading and
 * writing the fds it already holds (its channel; 0-2 are /dev/null), memory management without
 * ever making memory executable, clocks, sleeping, random, futex (libc internals), and exiting.
 * No open, no socket, no clone/fork/exec, no kill, no ptrace, no prctl, no mprotect(PROT_EXEC); prlimit64 only
 * on the worker itself. With the file system (when the kernel has Landlock): receiving the job's directories
 * on its channel, and the *at calls of phase_wasi_fs.c; the only open is openat2, which the WASI layer always
 * calls with RESOLVE_BENEATH, and Landlock (phase_sandbox_landlock, applied before the job) bounds what any
 * path may reach to the job's directories, so a worker that broke out of wasm3 cannot name anything else.
 * With the compiling engine (a fork server started with --wasmtime): setitimer(ITIMER_REAL) too, the epoch timer
 * that ends a job at its deadline, and rt_sigaction on SIGSEGV/SIGBUS/SIGILL/SIGFPE only (wasmtime's handler
 * restores the default action for a fault outside wasm code). Nothing else: the code was compiled and mapped
 * executable in the fork server
 * before the fork, its signal handlers and trap state set up there, so a worker still never maps anything
 * executable (the PROT_EXEC rule below holds for it as for wasm3) and never starts a thread.
 * The filter goes on before the worker waits for its job. It is a binary search over the allowed numbers, not a
 * chain of comparisons: the kernel emulates a new filter once per system call number, under a lock, to cache
 * the numbers it always allows, and a chain made installing it twice as dear (198 -> 96 us, docs/SANDBOX.md).
 * Anything else kills the whole worker with SIGSYS, which the parent reports as `crashed`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/landlock.h>
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)   /* Landlock ABI 3, newer than some distributions' headers */
#endif
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include "sandbox.h"

#if defined(__x86_64__)
#define SANDBOX_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SANDBOX_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "sandbox_seccomp.c: add this architecture's AUDIT_ARCH"
#endif

#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
/* Low 32 bits of argument i (little-endian): enough for prot flags, fds and fcntl commands. */
#define LOAD_ARG_LO(i) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args) + 8 * (i))
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define KILL BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)

#define FILTER_MAX PHASE_SECCOMP_MAX_INSNS
#define RULES_MAX 80
#define LEAF_RULES 4     /* numbers compared one by one at the bottom of the search */

/* What a policy does with one system call number; anything not named is killed. */
enum rule_kind {
    RULE_ALLOW,
    RULE_ARG_IN,       /* allowed when the low 32 bits of argument `arg` are one of values[0..count) */
    RULE_NO_EXEC,      /* mmap/mprotect: allowed unless argument 2 (prot) asks for PROT_EXEC */
    RULE_ERRNO,        /* fails with errno values[0] */
    RULE_ADD_FILTER,   /* seccomp(SECCOMP_SET_MODE_FILTER, 0 or SPEC_ALLOW): a filter can add, never remove */
};

typedef struct rule {
    unsigned nr;
    unsigned char kind, arg, count;
    uint32_t values[4];
} rule;

typedef struct policy {
    rule r[RULES_MAX];
    unsigned n;
} policy;

typedef struct filter {
    struct sock_filter ins[FILTER_MAX];
    unsigned n;
    int overflow;
} filter;

static void add(policy *p, unsigned nr, unsigned char kind, unsigned char arg, const uint32_t *values, unsigned count)
{
    if (p->n >= RULES_MAX || count > 4) {
        p->n = RULES_MAX + 1;   /* refused at build time; later rules are not stored either */
        return;
    }
    rule *r = &p->r[p->n++];
    memset(r, 0, sizeof *r);
    r->nr = nr;
    r->kind = kind;
    r->arg = arg;
    r->count = (unsigned char) count;
    for (unsigned i = 0; i < count; i++)
        r->values[i] = values[i];
}

static void allow(policy *p, unsigned nr)
{
    add(p, nr, RULE_ALLOW, 0, NULL, 0);
}

static void allow_if_arg(policy *p, unsigned nr, unsigned char arg, const uint32_t *values, unsigned count)
{
    add(p, nr, RULE_ARG_IN, arg, values, count);
}

static unsigned emit(filter *f, struct sock_filter ins)
{
    if (f->n < FILTER_MAX)
        f->ins[f->n] = ins;
    else
        f->overflow = 1;
    return f->n++;
}

/* A forward jump's offset from instruction `from` to `to`, or overflow when classic BPF cannot say it. */
static unsigned char offset(filter *f, unsigned from, unsigned to)
{
    if (to <= from || to - from - 1 > 255) {
        f->overflow = 1;
        return 0;
    }
    return (unsigned char) (to - from - 1);
}

/* A binary search over the sorted numbers of r[lo..hi): a JGE per level, then up to LEAF_RULES equality tests
 * whose true branch is patched to the rule's body later (body_jump[i] holds the instruction). A number that
 * matches nothing reaches a KILL. The kernel runs (and, to build its per-number cache, emulates) a few
 * comparisons per call instead of one per allowed number. */
static void search(filter *f, const policy *p, unsigned lo, unsigned hi, unsigned *body_jump)
{
    if (hi - lo <= LEAF_RULES) {
        for (unsigned i = lo; i < hi; i++)
            body_jump[i] = emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, p->r[i].nr, 0, 0));
        emit(f, (struct sock_filter) KILL);
        return;
    }
    unsigned mid = lo + (hi - lo) / 2;
    unsigned split = emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, p->r[mid].nr, 0, 0));
    search(f, p, lo, mid, body_jump);
    if (split < FILTER_MAX)
        f->ins[split].jt = offset(f, split, f->n);
    search(f, p, mid, hi, body_jump);
}

/* A rule's body, entered with the number in the accumulator; it always ends in a return. The search's equality
 * test for the rule (instruction `jump`) is pointed at it, or at the shared ALLOW for a plain allow. */
static void body(filter *f, const rule *r, unsigned shared_allow, unsigned jump)
{
    if (jump < FILTER_MAX)
        f->ins[jump].jt = offset(f, jump, r->kind == RULE_ALLOW ? shared_allow : f->n);
    switch (r->kind) {
    case RULE_ALLOW:
        return;
    case RULE_ARG_IN:
        emit(f, (struct sock_filter) LOAD_ARG_LO(r->arg));
        for (unsigned i = 0; i < r->count; i++)
            emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, r->values[i],
                                                  (unsigned char) (r->count - i), 0));
        emit(f, (struct sock_filter) KILL);
        emit(f, (struct sock_filter) ALLOW);
        return;
    case RULE_NO_EXEC:
        emit(f, (struct sock_filter) LOAD_ARG_LO(2));
        emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1));
        emit(f, (struct sock_filter) KILL);
        emit(f, (struct sock_filter) ALLOW);
        return;
    case RULE_ERRNO:
        emit(f, (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (r->values[0] & SECCOMP_RET_DATA)));
        return;
    case RULE_ADD_FILTER:
        emit(f, (struct sock_filter) LOAD_ARG_LO(0));
        emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_SET_MODE_FILTER, 0, 3));
        emit(f, (struct sock_filter) LOAD_ARG_LO(1));
        emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, 0));
        emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_FILTER_FLAG_SPEC_ALLOW, 1, 0));
        emit(f, (struct sock_filter) KILL);
        emit(f, (struct sock_filter) ALLOW);
        return;
    }
    f->overflow = 1;
}

static int by_number(const void *a, const void *b)
{
    unsigned x = ((const rule *) a)->nr, y = ((const rule *) b)->nr;
    return x < y ? -1 : x > y;
}

/* Any other architecture, and x32 calls, kill; then the system call's number is loaded. */
static void prologue(filter *f)
{
    emit(f, (struct sock_filter) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SANDBOX_AUDIT_ARCH, 1, 0));
    emit(f, (struct sock_filter) KILL);
    emit(f, (struct sock_filter) LOAD_NR);
#if defined(__x86_64__)
    /* x32 system calls (bit 30) would bypass the numbers below */
    emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));
    emit(f, (struct sock_filter) KILL);
#endif
}

/* The policy's rules searched by number after the prologue. -1/E2BIG when it does not fit, -1/EINVAL when a
 * number has two rules. */
static int build(policy *p, filter *f)
{
    if (p->n > RULES_MAX || p->n == 0) {
        errno = E2BIG;
        return -1;
    }
    qsort(p->r, p->n, sizeof p->r[0], by_number);
    for (unsigned i = 1; i < p->n; i++)
        if (p->r[i].nr == p->r[i - 1].nr) {
            errno = EINVAL;
            return -1;
        }
    memset(f, 0, sizeof *f);
    prologue(f);
    unsigned body_jump[RULES_MAX];
    search(f, p, 0, p->n, body_jump);
    unsigned shared_allow = emit(f, (struct sock_filter) ALLOW);
    for (unsigned i = 0; i < p->n; i++)
        body(f, &p->r[i], shared_allow, body_jump[i]);
    if (f->overflow) {
        errno = E2BIG;
        return -1;
    }
    return 0;
}

/* What a worker needs in every case: memory (never executable), its channel, clocks. */
static const unsigned base_calls[] = {
    __NR_read, __NR_write, __NR_exit, __NR_exit_group, __NR_brk, __NR_munmap, __NR_mremap, __NR_madvise,
    __NR_rt_sigreturn, __NR_clock_gettime, __NR_clock_getres, __NR_clock_nanosleep, __NR_getrandom, __NR_futex,
};

/* The calls of the WASI file system (phase_wasi_fs.c) on descriptors the worker holds. Paths are resolved by
 * openat2(RESOLVE_BENEATH); what a worker that broke out of wasm3 could still name is bounded by Landlock. */
static const unsigned fs_calls[] = {
    __NR_openat2, __NR_close, __NR_getdents64, __NR_fstat, __NR_newfstatat, __NR_statx, __NR_lseek, __NR_readv,
    __NR_writev, __NR_pread64, __NR_pwrite64, __NR_preadv, __NR_pwritev, __NR_mkdirat, __NR_unlinkat,
#ifdef __NR_renameat
    __NR_renameat,
#endif
    __NR_renameat2, __NR_linkat, __NR_symlinkat, __NR_readlinkat, __NR_utimensat, __NR_ftruncate, __NR_fallocate,
    __NR_fsync, __NR_fdatasync, __NR_fadvise64, __NR_landlock_create_ruleset, __NR_landlock_add_rule,
    __NR_landlock_restrict_self,
};

static void worker_policy(policy *p, int allow_fs, int allow_timer)
{
    p->n = 0;
    for (unsigned i = 0; i < sizeof base_calls / sizeof base_calls[0]; i++)
        allow(p, base_calls[i]);
    add(p, __NR_mmap, RULE_NO_EXEC, 0, NULL, 0);
    add(p, __NR_mprotect, RULE_NO_EXEC, 0, NULL, 0);
    /* prlimit64 on itself only (pid 0): the job's rlimits are set after the filter is on. Without
     * capabilities (dropped before) a process can only lower its own limits, never raise them. */
    static const uint32_t self[] = {0};
    allow_if_arg(p, __NR_prlimit64, 0, self, 1);
    if (allow_timer) {
        /* the epoch timer: only ITIMER_REAL, which signals the worker itself */
        static const uint32_t real[] = {ITIMER_REAL};
        allow_if_arg(p, __NR_setitimer, 0, real, 1);
        /* wasmtime's fault handler, on a fault outside wasm code (a crash), restores the default action before
         * the fault repeats: only for the four fault signals, so the worker dies of its real signal */
        static const uint32_t faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
        allow_if_arg(p, __NR_rt_sigaction, 0, faults, 4);
        /* a wasm3 job's worker takes those two back (phase_sandbox_seccomp_narrow) */
        add(p, __NR_seccomp, RULE_ADD_FILTER, 0, NULL, 0);
    }
    if (allow_fs) {
        /* "go" arrives on the worker's channel (fd 3) with the job's directories attached */
        static const uint32_t channel[] = {3};
        allow_if_arg(p, __NR_recvmsg, 0, channel, 1);
        static const uint32_t fcntls[] = {F_GETFL, F_SETFL, F_DUPFD_CLOEXEC};
        allow_if_arg(p, __NR_fcntl, 1, fcntls, 3);
        for (unsigned i = 0; i < sizeof fs_calls / sizeof fs_calls[0]; i++)
            allow(p, fs_calls[i]);
    }
}

static void compiler_policy(policy *p, int pid)
{
    p->n = 0;
    for (unsigned i = 0; i < sizeof base_calls / sizeof base_calls[0]; i++)
        allow(p, base_calls[i]);
    /* wasmtime maps the code it compiled executable (the helper never runs it); nothing else is added */
    allow(p, __NR_mmap);
    allow(p, __NR_mprotect);
    static const uint32_t self[] = {0};
    allow_if_arg(p, __NR_prlimit64, 0, self, 1);
    /* abort() on a failed allocation: it blocks signals and raises SIGABRT on itself only */
    allow(p, __NR_rt_sigprocmask);
    allow(p, __NR_getpid);
    allow(p, __NR_gettid);
    const uint32_t own[] = {(uint32_t) pid};
    allow_if_arg(p, __NR_tgkill, 0, own, 1);
    /* wasmtime asks whether stderr (/dev/null here) is a terminal: it is not */
    const uint32_t enotty[] = {ENOTTY};
    add(p, __NR_ioctl, RULE_ERRNO, 0, enotty, 1);
}

/* no_new_privs, then the filter. */
static int load(const filter *f)
{
    struct sock_fprog prog = {.len = (unsigned short) f->n, .filter = (struct sock_filter *) f->ins};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    /* SPEC_ALLOW: do not force the speculative-store-bypass mitigation on the worker. Left on, it made every
     * job about 3x slower (measured: 76 -> 260 us for hello), and it protects secrets inside the process,
     * where a single-use worker holds nothing but its own job (other slots' memory is unmapped). */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog) == 0)
        return 0;
    if (errno != EINVAL)
        return -1;
    /* Kernels before 4.17 know no flags. */
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
        return -1;
    return 0;
}

int phase_sandbox_seccomp_narrow(void)
{
    /* wasmtime's fault handlers (inherited) go first: a crash in wasm3 then kills the worker with its real signal,
     * as in a worker forked before the compiling engine was set up */
    static const int faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
    for (unsigned i = 0; i < sizeof faults / sizeof faults[0]; i++)
        if (signal(faults[i], SIG_DFL) == SIG_ERR)
            return -1;
    filter f;
    memset(&f, 0, sizeof f);
    prologue(&f);
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_setitimer, 2, 0));
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_rt_sigaction, 1, 0));
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_seccomp, 0, 1));
    emit(&f, (struct sock_filter) KILL);
    emit(&f, (struct sock_filter) ALLOW);
    struct sock_fprog prog = {.len = (unsigned short) f.n, .filter = f.ins};
    /* SPEC_ALLOW as for the first filter: without it the kernel would force its store-bypass mitigation (3x) */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog) == 0)
        return 0;
    if (errno != EINVAL)
        return -1;
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0 ? 0 : -1;   /* kernels before 4.17 */
}

int phase_sandbox_seccomp_install_compiler(int pid)
{
    policy p;
    filter f;
    compiler_policy(&p, pid);
    if (build(&p, &f) != 0)
        return -1;
    return load(&f);
}

int phase_sandbox_seccomp_install(int allow_fs, int allow_timer)
{
    policy p;
    filter f;
    worker_policy(&p, allow_fs, allow_timer);
    if (build(&p, &f) != 0)
        return -1;
    return load(&f);
}

int phase_sandbox_seccomp_program(const char *which, struct sock_filter *out, unsigned *len)
{
    policy p;
    filter f;
    static const char *const workers[] = {"worker", "worker-fs", "worker-timer", "worker-fs-timer"};
    int worker = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(which, workers[i]) == 0)
            worker = i;
    if (worker >= 0)
        worker_policy(&p, worker & 1, worker >> 1);
    else if (strcmp(which, "compiler") == 0)
        compiler_policy(&p, 4242);
    else {
        errno = EINVAL;
        return -1;
    }
    if (build(&p, &f) != 0)
        return -1;
    memcpy(out, f.ins, f.n * sizeof f.ins[0]);
    *len = f.n;
    return 0;
}

/* ---- Landlock ---------------------------------------------------------------------------------- */

int phase_sandbox_landlock_abi(void)
{
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return abi < 0 ? 0 : (int) abi;
}

int phase_sandbox_landlock(int abi, const int *fds, uint32_t readonly_mask, uint32_t n)
{
    uint64_t handled = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_READ_FILE
                       | LANDLOCK_ACCESS_FS_READ_DIR | LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE
                       | LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG
                       | LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK
                       | LANDLOCK_ACCESS_FS_MAKE_SYM;
    if (abi >= 2)
        handled |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3)
        handled |= LANDLOCK_ACCESS_FS_TRUNCATE;
    uint64_t read_only = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
    uint64_t read_write = handled
                          & ~(uint64_t) (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_MAKE_CHAR
                                         | LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO
                                         | LANDLOCK_ACCESS_FS_MAKE_BLOCK);
    struct landlock_ruleset_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.handled_access_fs = handled;
    int ruleset = (int) syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (ruleset < 0)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        struct landlock_path_beneath_attr rule = {
            .allowed_access = (readonly_mask & (1u << i)) ? read_only : read_write,
            .parent_fd = fds[i],
        };
        if (syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) != 0) {
            close(ruleset);
            return -1;
        }
    }
    int rc = (int) syscall(SYS_landlock_restrict_self, ruleset, 0);
    close(ruleset);
    return rc == 0 ? 0 : -1;
}
