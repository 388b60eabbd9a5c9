/* Isolated workers: a single-threaded fork server keeps one pre-forked, single-use worker per slot;
 * the parent hands a job to a slot's worker through shared memory and reads the result back from it.
 * See sandbox_proto.h for the processes and formats, docs/SANDBOX.md for the design.
 */
#ifndef PHASE_SANDBOX_H
#define PHASE_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#include "phase_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fork server's entry point (the phase-sandboxd executable's main, or called from Python in a fresh
 * process). Arguments: --main FD --slot SOCKFD:SHMFD [--slot ...]. Never returns: it _exits. */
__attribute__((visibility("default"))) int phase_sandbox_server_main(int argc, char **argv);

/* Install the worker's seccomp filter in the calling thread (after PR_SET_NO_NEW_PRIVS). allow_fs: also the
 * file system's calls (only where Landlock confines them); allow_timer: setitimer(ITIMER_REAL), the compiling
 * engine's epoch timer, and rt_sigaction on the four fault signals (only in workers of a fork server that runs
 * it). 0 or -1/errno. */
int phase_sandbox_seccomp_install(int allow_fs, int allow_timer);
/* In a worker installed with allow_timer whose job runs on wasm3: take the timer calls back (a second filter that
 * kills setitimer, rt_sigaction and seccomp itself; the fault signals' default actions restored first), so a wasm3
 * job runs under the exact wasm3 policy whatever its server compiled. 0 or -1/errno. */
int phase_sandbox_seccomp_narrow(void);
/* A compile helper's filter (csrc/sandbox_server.c): memory calls with PROT_EXEC too (wasmtime publishes the code
 * it compiled), writes, its own rlimits, and signals to itself only (pid: its own). 0 or -1/errno. */
int phase_sandbox_seccomp_install_compiler(int pid);

/* The classic BPF program of a policy, for tests (phase-sandboxd --seccomp-program NAME): "worker", "worker-fs",
 * "worker-timer", "worker-fs-timer" (allow_fs, allow_timer) or "compiler" (pid 4242). out holds
 * PHASE_SECCOMP_MAX_INSNS instructions. 0 or -1/errno (EINVAL: another name). */
#define PHASE_SECCOMP_MAX_INSNS 255   /* every jump then fits classic BPF's 8-bit offsets */
struct sock_filter;
int phase_sandbox_seccomp_program(const char *which, struct sock_filter *out, unsigned *len);

/* The kernel's Landlock ABI version, 0 if it has none. */
int phase_sandbox_landlock_abi(void);
/* Confine the calling process's file system access to beneath the n directory fds (bit i of readonly_mask:
 * read only), nothing elsewhere. 0 or -1/errno. */
int phase_sandbox_landlock(int abi, const int *fds, uint32_t readonly_mask, uint32_t n);

/* ---- the parent's side of one slot --------------------------------------------------------- */

/* Buffers per slot at most (each: a memfd and at most one pre-forked worker). */
#define PHASE_SANDBOX_MAX_DEPTH 8

typedef struct phase_sandbox_spare {
    int chan;                 /* its channel */
    uint32_t gen;
    int32_t pid;
    uint32_t buffer;
    uint64_t cache_seq;       /* module ADDs the server had processed when it forked this worker */
    uint64_t compile_seq;     /* compiles the server had finished when it forked this worker */
    int retiring;             /* asked to be killed (phase_sandbox_slot_renew); its EXITED is still to come */
} phase_sandbox_spare;

typedef struct phase_sandbox_slot {
    int sock;                 /* seqpacket socket to the fork server */
    uint32_t depth;           /* buffers, each with its own shared memory and at most one worker */
    uint8_t *shms[PHASE_SANDBOX_MAX_DEPTH];
    size_t shm_bytes;         /* of each buffer */
    uint8_t *shm;             /* the current job's buffer */
    /* Workers set up and waiting for "go", oldest first (READY received, EXITED not). */
    phase_sandbox_spare spares[PHASE_SANDBOX_MAX_DEPTH];
    uint32_t nspares;
    int chan;                 /* the current job's worker; -1: none */
    uint32_t gen;             /* generation of the current (or last) job's worker */
    int32_t pid;              /* the pid of the worker that runs (or will run) the slot's next job */
    uint64_t cache_seq;       /* cache_seq of that worker */
    uint64_t compile_seq;     /* compile_seq of that worker */
    int awaiting_exit;        /* the current job's worker died or was killed; its EXITED message is still to come */
    int reuse;                /* the current worker lacked the module and waits for the bytes: use it again */
    uint64_t seq;
    uint64_t out_off, out_cap;    /* where the current job's output goes (parent's copy; shm is untrusted) */
    /* about the last job's worker to exit */
    int32_t last_wait_status;
    int64_t last_maxrss_kb;
    int64_t last_cpu_us;
    /* the last job's timeline (CLOCK_MONOTONIC ns): go sent; worker set up, woke, confined, ran; done received */
    uint64_t t_go_ns, t_ready_ns, t_woke_ns, t_confined_ns, t_ran_ns, t_done_ns;
} phase_sandbox_slot;

/* A job's stop request, shared by the thread that runs the job and one that may stop it (Sandbox.stop). Before
 * each "go", phase_sandbox_slot_run stores the generation of the worker it is about to give the job in ``gen``,
 * then loads ``stopped``; phase_sandbox_stop_request stores ``stopped``, then loads ``gen`` for the caller to
 * have that worker killed. Both sequentially consistent, so either the run sees the stop and sends no "go", or
 * the stopper sees the generation of the worker that gets it: a stopped job never runs to completion. */
typedef struct phase_sandbox_stop {
    int stopped;
    uint32_t gen;             /* 0: no worker chosen yet */
} phase_sandbox_stop;

/* Mark the job stopped; the generation of the worker it was last given (0: none), to be killed. Any thread. */
uint32_t phase_sandbox_stop_request(phase_sandbox_stop *stop);

typedef struct phase_sandbox_job {
    const uint8_t *module_hash;           /* 32 bytes */
    const uint8_t *module;                /* NULL: the worker must have it cached */
    size_t module_len;
    const uint8_t *input;
    size_t input_len;
    const char *entry;
    const char *const *argv;
    uint32_t argc;
    const char *const *envp;
    uint32_t envc;
    phase_limits limits;
    int deterministic;
    uint8_t seed[32];
    const phase_preopen *preopens;        /* directories passed to the worker with "go" (SCM_RIGHTS) */
    uint32_t npreopens;
    phase_fs_quota quota;                 /* the bound on what the job keeps in its writable directories */
    uint32_t test_action;                 /* sandbox_test_action; 0 outside tests */
    uint64_t hard_timeout_ms;             /* kill the worker after this long; 0 = never */
    uint32_t spin_us;                     /* busy-wait this long for "done" before sleeping (latency vs CPU) */
    phase_output_sink output_sink;        /* the worker's output as it writes (at most limits.output_bytes); NULL:
                                           * only in the result. A nonzero return stops further delivery. */
    void *output_ctx;
    phase_sandbox_stop *stop;             /* NULL: the job cannot be stopped */
    phase_engine engine;                  /* wasmtime: the fork server must have compiled the module (see
                                           * phase_sandbox_slot_run's 3) */
} phase_sandbox_job;

/* Bytes of shared memory a job needs (payloads + room for output); compare with slot->shm_bytes. */
uint64_t phase_sandbox_job_shm_bytes(const phase_sandbox_job *job);

/* Take ownership of sock and map the depth buffers' shm_fds (closed afterwards). 0, or -1 with a message. */
int phase_sandbox_slot_open(phase_sandbox_slot *slot, int sock, const int *shm_fds, uint32_t depth, char *err,
                            size_t errlen);
void phase_sandbox_slot_close(phase_sandbox_slot *slot);

/* Wait (up to timeout_ms) until the slot has a fresh worker set up for its next job. 0 or -1. */
int phase_sandbox_slot_ready(phase_sandbox_slot *slot, int timeout_ms, char *err, size_t errlen);

/* Have the fork server kill the slot's idle workers forked before it had finished compile_seq compiles (they lack
 * that code: a compiled job given to one would only be declined) and wait, up to timeout_ms, until the slot's next
 * worker is one forked since. Nothing to do when the slot keeps its current worker for a module's bytes. 0 or -1. */
int phase_sandbox_slot_renew(phase_sandbox_slot *slot, uint64_t compile_seq, int timeout_ms, char *err,
                             size_t errlen);

/* Read what the fork server has reported so far without waiting (new spares, spares that died). 0, or -1 if
 * the server is gone. */
int phase_sandbox_slot_poll(phase_sandbox_slot *slot);

/* Run a job on the slot's worker. Returns 0 with result filled (status tells how it ended, incl.
 * crashed/timeout/memory_limit when the worker died); 1 if the worker lacks the module (call again with
 * the bytes; the same worker waits); 2 if the job's stop was requested before its worker got "go" (no worker ran
 * it), with a message; 3 if the job is a wasmtime job whose module the fork server has not compiled (the worker
 * validated the bytes and exited: have the server compile it, then call again); -1 if the sandbox itself failed
 * (fork server gone), with a message. */
int phase_sandbox_slot_run(phase_sandbox_slot *slot, const phase_sandbox_job *job, phase_result *result,
                           char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
