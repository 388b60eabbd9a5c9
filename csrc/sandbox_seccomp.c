/* The worker's seccomp filter: a small allow-list in classic BPF, written out here rather than
 * generated (no build dependency, and the whole policy fits on one screen).
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
 * The filter goes on before the worker waits for its job (compiling it costs ~100 us).
 * Anything else kills the whole worker with SIGSYS, which the parent reports as `crashed`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
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

#define FILTER_MAX 160

typedef struct filter {
    struct sock_filter ins[FILTER_MAX];
    unsigned short n;
} filter;

static void emit(filter *f, struct sock_filter ins)
{
    if (f->n < FILTER_MAX)
        f->ins[f->n] = ins;
    f->n++;
}

static void allow_nr(filter *f, unsigned nr)
{
    emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1));
    emit(f, (struct sock_filter) ALLOW);
}

/* Allow syscall nr only when the low 32 bits of argument arg are one of values[0..count) (then reload nr). */
static void allow_nr_if_arg(filter *f, unsigned nr, unsigned arg, const uint32_t *values, unsigned count)
{
    emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, (unsigned char) (count + 3)));
    emit(f, (struct sock_filter) LOAD_ARG_LO(arg));
    for (unsigned i = 0; i < count; i++)
        emit(f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, values[i], (unsigned char) (count - i), 0));
    emit(f, (struct sock_filter) KILL);
    emit(f, (struct sock_filter) ALLOW);
}

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

static int load(filter *f);

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

/* What a worker needs in every case: memory (never executable: patched by the caller), its channel, clocks. */
static const unsigned base_calls[] = {
    __NR_read, __NR_write, __NR_exit, __NR_exit_group, __NR_brk, __NR_munmap, __NR_mremap, __NR_madvise,
    __NR_rt_sigreturn, __NR_clock_gettime, __NR_clock_getres, __NR_clock_nanosleep, __NR_getrandom, __NR_futex,
};

int phase_sandbox_seccomp_narrow(void)
{
    /* wasmtime's fault handlers (inherited) go first: a crash in wasm3 then kills the worker with its real signal,
     * as in a worker forked before the compiling engine was set up */
    static const int faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
    for (unsigned i = 0; i < sizeof faults / sizeof faults[0]; i++)
        if (signal(faults[i], SIG_DFL) == SIG_ERR)
            return -1;
    filter f;
    f.n = 0;
    prologue(&f);
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_setitimer, 2, 0));
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_rt_sigaction, 1, 0));
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_seccomp, 0, 1));
    emit(&f, (struct sock_filter) KILL);
    emit(&f, (struct sock_filter) ALLOW);
    struct sock_fprog prog = {.len = f.n, .filter = f.ins};
    /* SPEC_ALLOW as for the first filter: without it the kernel would force its store-bypass mitigation (3x) */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, &prog) == 0)
        return 0;
    if (errno != EINVAL)
        return -1;
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0 ? 0 : -1;   /* kernels before 4.17 */
}

int phase_sandbox_seccomp_install_compiler(int pid)
{
    filter f;
    f.n = 0;
    prologue(&f);
    for (unsigned i = 0; i < sizeof base_calls / sizeof base_calls[0]; i++)
        allow_nr(&f, base_calls[i]);
    /* wasmtime maps the code it compiled executable (the helper never runs it); nothing else is added */
    allow_nr(&f, __NR_mmap);
    allow_nr(&f, __NR_mprotect);
    static const uint32_t self[] = {0};
    allow_nr_if_arg(&f, __NR_prlimit64, 0, self, 1);
    /* abort() on a failed allocation: it blocks signals and raises SIGABRT on itself only */
    allow_nr(&f, __NR_rt_sigprocmask);
    allow_nr(&f, __NR_getpid);
    allow_nr(&f, __NR_gettid);
    const uint32_t own[] = {(uint32_t) pid};
    allow_nr_if_arg(&f, __NR_tgkill, 0, own, 1);
    /* wasmtime asks whether stderr (/dev/null here) is a terminal: it is not */
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 1));
    emit(&f, (struct sock_filter) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOTTY & SECCOMP_RET_DATA)));
    emit(&f, (struct sock_filter) KILL);
    if (f.n > FILTER_MAX) {
        errno = E2BIG;
        return -1;
    }
    return load(&f);
}

int phase_sandbox_seccomp_install(int allow_fs, int allow_timer)
{
    filter f;
    f.n = 0;
    prologue(&f);
    /* mmap and mprotect: allowed only without PROT_EXEC (the jumps to the prot check are patched below) */
    unsigned short to_prot[2];
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 0, 1));
    to_prot[0] = f.n;
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0));
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 0, 1));
    to_prot[1] = f.n;
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0));
    for (unsigned i = 0; i < sizeof base_calls / sizeof base_calls[0]; i++)
        allow_nr(&f, base_calls[i]);
    /* prlimit64 on itself only (pid 0): the job's rlimits are set after the filter is on. Without
     * capabilities (dropped before) a process can only lower its own limits, never raise them. */
    static const uint32_t self[] = {0};
    allow_nr_if_arg(&f, __NR_prlimit64, 0, self, 1);
    if (allow_timer) {
        /* the epoch timer: only ITIMER_REAL, which signals the worker itself */
        static const uint32_t real[] = {ITIMER_REAL};
        allow_nr_if_arg(&f, __NR_setitimer, 0, real, 1);
        /* wasmtime's fault handler, on a fault outside wasm code (a crash), restores the default action before
         * the fault repeats: only for the four fault signals, so the worker dies of its real signal */
        static const uint32_t faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
        allow_nr_if_arg(&f, __NR_rt_sigaction, 0, faults, 4);
        /* a wasm3 job's worker takes those two back (phase_sandbox_seccomp_narrow): seccomp with
         * SECCOMP_SET_MODE_FILTER and no flag but SPEC_ALLOW only, which can add restrictions, never remove one */
        emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_seccomp, 0, 7));
        emit(&f, (struct sock_filter) LOAD_ARG_LO(0));
        emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_SET_MODE_FILTER, 0, 3));
        emit(&f, (struct sock_filter) LOAD_ARG_LO(1));
        emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 2, 0));
        emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_FILTER_FLAG_SPEC_ALLOW, 1, 0));
        emit(&f, (struct sock_filter) KILL);
        emit(&f, (struct sock_filter) ALLOW);
        emit(&f, (struct sock_filter) LOAD_NR);
    }
    if (allow_fs) {
        /* "go" arrives on the worker's channel (fd 3) with the job's directories attached */
        static const uint32_t channel[] = {3};
        allow_nr_if_arg(&f, __NR_recvmsg, 0, channel, 1);
        static const uint32_t fcntls[] = {F_GETFL, F_SETFL, F_DUPFD_CLOEXEC};
        allow_nr_if_arg(&f, __NR_fcntl, 1, fcntls, 3);
        for (unsigned i = 0; i < sizeof fs_calls / sizeof fs_calls[0]; i++)
            allow_nr(&f, fs_calls[i]);
    }
    emit(&f, (struct sock_filter) KILL);
    /* prot check: argument 2 */
    unsigned short prot_check = f.n;
    emit(&f, (struct sock_filter) LOAD_ARG_LO(2));
    emit(&f, (struct sock_filter) BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1));
    emit(&f, (struct sock_filter) KILL);
    emit(&f, (struct sock_filter) ALLOW);
    if (f.n > FILTER_MAX) {
        errno = E2BIG;
        return -1;
    }
    for (int i = 0; i < 2; i++)
        f.ins[to_prot[i]].k = (unsigned) (prot_check - to_prot[i] - 1);
    return load(&f);
}

/* no_new_privs, then the filter. */
static int load(filter *f)
{
    struct sock_fprog prog = {.len = f->n, .filter = f->ins};
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
