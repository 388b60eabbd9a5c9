/* The worker's seccomp filter: a small allow-list in classic BPF, written out here rather than
 * generated (no build dependency, and the whole policy fits on one screen).
 *
 * Allowed is exactly what running a job needs once the worker has read its request: reading and
 * writing the fds it already holds (its channel; 0-2 are /dev/null), memory management without
 * ever making memory executable, clocks, sleeping, random, futex (libc internals), and exiting.
 * No open, no socket, no clone/fork/exec, no kill, no ptrace, no prctl, no mprotect(PROT_EXEC); prlimit64 only
 * on the worker itself. The filter goes on before the worker waits for its job (compiling it costs ~100 us).
 * Anything else kills the whole worker with SIGSYS, which the parent reports as `crashed`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
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
/* Low 32 bits of argument i (little-endian): enough for prot flags. */
#define LOAD_ARG_LO(i) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args) + 8 * (i))
#define ALLOW_NR(name) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_##name, 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define KILL BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)

int phase_sandbox_seccomp_install(void)
{
    struct sock_filter filter[] = {
        /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SANDBOX_AUDIT_ARCH, 1, 0),
        /* 2 */ KILL,
        /* 3 */ LOAD_NR,
#if defined(__x86_64__)
        /* x32 system calls (bit 30) would bypass the numbers below */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1),
        KILL,
#endif
        /* mmap and mprotect: allowed only without PROT_EXEC (checked at the end) */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),   /* patched below to jump to the prot check */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 0, 1),
        BPF_JUMP(BPF_JMP | BPF_JA, 0, 0, 0),   /* patched below */
        ALLOW_NR(read),
        ALLOW_NR(write),
        ALLOW_NR(exit),
        ALLOW_NR(exit_group),
        ALLOW_NR(brk),
        ALLOW_NR(munmap),
        ALLOW_NR(mremap),
        ALLOW_NR(madvise),
        ALLOW_NR(rt_sigreturn),
        ALLOW_NR(clock_gettime),
        ALLOW_NR(clock_getres),
        ALLOW_NR(clock_nanosleep),
        ALLOW_NR(getrandom),
        ALLOW_NR(futex),
        /* prlimit64 on itself only (pid 0): the job's rlimits are set after the filter is on. Without
         * capabilities (dropped before) a process can only lower its own limits, never raise them. */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prlimit64, 0, 6),
        LOAD_ARG_LO(0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args) + 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0),
        KILL,
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        KILL,
        /* prot check: argument 2 */
        LOAD_ARG_LO(2),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1),
        KILL,
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    unsigned short n = (unsigned short) (sizeof filter / sizeof filter[0]);
    unsigned short prot_check = (unsigned short) (n - 4);
    /* Patch the two forward jumps to the prot check (offsets are relative to the next instruction). */
    for (unsigned short i = 0; i < n; i++) {
        if (filter[i].code == (BPF_JMP | BPF_JA) && filter[i].k == 0)
            filter[i].k = (unsigned) (prot_check - i - 1);
    }
    struct sock_fprog prog = {.len = n, .filter = filter};
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
