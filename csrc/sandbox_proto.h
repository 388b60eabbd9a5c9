/* The sandbox's wire and shared-memory formats, shared by the fork server, its workers and the
 * parent-side client. One source for every size and message: nothing here is typed twice.
 *
 * Processes:
 *   parent (the node's Python)  --main socket (stream)-->  fork server  --fork-->  worker (single use)
 *   parent  <--slot socket i (seqpacket)-->  fork server          one per slot: READY / EXITED / KILL
 *   parent  <--worker channel (seqpacket, fresh per worker)-->  worker        "go" / "done" bytes, and the
 *                                                                             job's streamed output (chunks)
 *   parent  <--events socket (seqpacket)--  fork server          COMPILED: a compile the parent asked for ended
 *   fork server  --fork-->  compile helper (single use)          compiles one cached module, writes its code into a
 *                                                                memfd the server made, exits (docs/SANDBOX.md)
 *   parent, fork server, worker of slot i buffer b: that buffer's shared memory (memfd mapped before fork);
 *   a slot has 1..SANDBOX_MAX_DEPTH buffers, each with at most one worker alive at a time
 *
 * Everything a worker writes is untrusted: the parent bounds-checks the response, and takes the
 * worker's fate (exit status, pid) only from the fork server.
 */
#ifndef PHASE_SANDBOX_PROTO_H
#define PHASE_SANDBOX_PROTO_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "phase_core.h"
#include "sandbox.h"

#define SANDBOX_MAGIC 0x50485342u         /* "PHSB" */
#define SANDBOX_VERSION 5u
#define SANDBOX_HEADER_BYTES 4096u        /* request + response headers; payloads follow */
#define SANDBOX_MIN_SHM_BYTES (1u << 20)
/* Buffers (memfd + pre-forked worker) per slot at most: the slot's next job takes a ready one while the
 * server replaces the used ones. */
#define SANDBOX_MAX_DEPTH PHASE_SANDBOX_MAX_DEPTH

/* Streamed output on the worker channel (when the request asks for it): one message per chunk, a tag byte then at
 * most SANDBOX_CHUNK_BYTES of output, before "done". Untrusted like the rest: the parent delivers no more than the
 * job's output limit. */
#define SANDBOX_CHUNK_BYTES 65536u
#define SANDBOX_CHUNK_STDOUT 'o'
#define SANDBOX_CHUNK_STDERR 'e'
#define SANDBOX_DONE 'd'

/* Worker exit code when it could not set itself up (rlimits, seccomp, ...). */
#define SANDBOX_EXIT_SETUP 99
/* ... because this system has no seccomp(2) (ENOSYS: a kernel without it, or qemu-user emulation). */
#define SANDBOX_EXIT_NO_SECCOMP 98
/* Worker exit code when the parent closed its channel without a job. */
#define SANDBOX_EXIT_IDLE 0

/* Test-only actions a worker performs after its seccomp filter is installed, instead of the job:
 * they prove the confinement in tests (never set by the public API). */
enum sandbox_test_action {
    SANDBOX_TEST_NONE = 0,
    SANDBOX_TEST_FORBIDDEN_SYSCALL = 1,   /* socket(): the filter must kill the worker (SIGSYS) */
    SANDBOX_TEST_SEGFAULT = 2,            /* raise SIGSEGV mid-job */
    SANDBOX_TEST_SPIN = 3,                /* spin in C, out of the meter's reach: only the hard timeout ends it */
    SANDBOX_TEST_EXEC_MMAP = 4,           /* mmap with PROT_EXEC: the filter must kill the worker */
    SANDBOX_TEST_ALLOCATE = 5,            /* malloc until it fails: RLIMIT_AS must stop it (reports memory_limit) */
    SANDBOX_TEST_FORGE = 6,               /* a hostile worker: rewrites the request's output window, claims more
                                           * output than exists, then pre-answers the next job */
    SANDBOX_TEST_SNOOP = 7,               /* a worker that broke out of wasm3 reads its whole buffer: reports in its
                                           * message how many nonzero payload bytes are not its own job's */
    SANDBOX_TEST_STREAM_FORGE = 9,        /* a hostile worker that streams far more than the output limit, then
                                           * reports success with no output at all */
    SANDBOX_TEST_OPEN_OUTSIDE = 8,        /* a worker that broke out of wasm3 opens paths itself, without
                                           * RESOLVE_BENEATH: reports each errno (Landlock must refuse outside) */
    SANDBOX_TEST_WRITE_PAST = 10,         /* a worker that broke out of wasm3 writes one file past the quota's
                                           * disk_bytes itself (RLIMIT_FSIZE must stop it) */
    SANDBOX_TEST_TIMER = 11,              /* setitimer(ITIMER_REAL, 100 s), then the job: allowed only in workers a
                                           * fork server forked after setting up the compiling engine (epoch timer) */
};

typedef struct sandbox_request {          /* written by the parent before "go" */
    uint32_t magic, version;
    uint64_t seq;
    uint8_t module_hash[PHASE_SHA256_BYTES];
    uint32_t module_inline;               /* 1: the module's bytes are in the payload; 0: the worker's cache */
    uint32_t stream_output;               /* 1: send output chunks on the channel as the job writes */
    uint64_t module_off, module_len;
    uint64_t input_off, input_len;
    uint64_t strings_off, strings_len;    /* entry, argv..., envp..., preopen guest names... each NUL-terminated */
    uint32_t argc, envc;
    uint32_t npreopens;                   /* directory fds that came with "go" (SCM_RIGHTS), in order */
    uint32_t preopen_readonly;            /* bit i: preopen i is read-only */
    phase_fs_quota quota;                 /* the writable directories' bound (also the worker's RLIMIT_FSIZE) */
    phase_limits limits;
    int32_t deterministic;
    uint32_t test_action;
    uint8_t seed[32];
    uint64_t out_off, out_cap;            /* where the worker may write stdout then stderr */
    uint32_t engine;                      /* phase_engine: wasmtime runs only code the fork server compiled */
    uint32_t reserved;
} sandbox_request;

typedef struct sandbox_response {         /* written by the worker before "done"; untrusted */
    uint64_t seq;
    int32_t status;                       /* phase_status */
    int32_t exit_code;
    uint32_t module_missing;              /* 1: the module is not in this worker's cache; send the bytes */
    uint32_t oom;                         /* 1: the worker ran out of address space (RLIMIT_AS) */
    uint32_t fs_unavailable;              /* phase_result.fs_unavailable */
    uint32_t fs_limit;                    /* phase_result.fs_limit */
    uint32_t uncompiled;                  /* 1: a wasmtime job whose code the fork server has not compiled (the
                                           * worker validated the bytes it was given, and exits) */
    uint32_t reserved;
    char message[PHASE_MESSAGE_BYTES];
    uint64_t out_len, err_len;            /* at request.out_off: stdout then stderr */
    uint64_t fuel_used, wall_us, memory_peak_bytes;
    /* no hashes: the parent computes the receipt's from what it sent and what it copied out */
    /* CLOCK_MONOTONIC ns in the worker, for the benchmark's breakdown: set up and waiting for "go", woke on
     * "go", confined, job done */
    uint64_t t_ready_ns, t_woke_ns, t_confined_ns, t_ran_ns;
    uint64_t done_seq;                    /* written last (release): = seq when the response is complete */
} sandbox_response;

typedef struct sandbox_shm_header {
    sandbox_request request;
    uint8_t pad[1024 - sizeof(sandbox_request) % 1024];
    sandbox_response response;
} sandbox_shm_header;

_Static_assert(sizeof(sandbox_shm_header) <= SANDBOX_HEADER_BYTES, "shm header too large");

/* ---- messages ---------------------------------------------------------------------------- */

enum sandbox_msg_type {
    SANDBOX_MSG_READY = 1,     /* server -> parent, slot socket, carries the worker channel fd; sent after the
                                * EXITED of the buffer's previous worker */
    SANDBOX_MSG_EXITED = 2,    /* server -> parent, slot socket: the worker of generation gen is reaped */
    SANDBOX_MSG_KILL = 3,      /* parent -> server, slot socket: SIGKILL the worker of generation gen */
    SANDBOX_MSG_ADD = 4,       /* parent -> server, main socket: validate and cache a module (bytes follow); with
                                * compile, also have it compiled for the compiling engine's configuration compile - 1
                                * (by a compile helper, off the server's loop; or from code_len bytes of code the
                                * parent read from its disk cache, which follow the module's bytes) */
    SANDBOX_MSG_COMPILED = 5,  /* server -> parent, events socket (sandbox_event): one per ADD with compile */
};

typedef struct sandbox_msg {
    uint32_t type;
    uint32_t gen;              /* worker generation within the slot (unique over its buffers) */
    int32_t pid;               /* READY/EXITED: the worker's pid, from the server (trusted) */
    int32_t wait_status;       /* EXITED: as from waitpid */
    uint64_t cache_seq;        /* READY: module ADDs the server had processed when it forked the worker;
                                * ADD: length of the module bytes that follow */
    int64_t maxrss_kb;         /* EXITED: the worker's peak resident size */
    int64_t cpu_us;            /* EXITED: user + system CPU time */
    uint32_t buffer;           /* READY/EXITED: the worker's buffer within the slot */
    uint32_t compile;          /* ADD: 0, or 1 + the engine index (fuel metering | NaN canonicalisation << 1) */
    uint64_t compile_seq;      /* READY: compiles the server had finished (COMPILED events sent) when it forked it */
    uint64_t code_len;         /* ADD: bytes of serialized code that follow the module's (0: compile it) */
} sandbox_msg;

/* Most bytes of compiled code the parent may send, or a compile helper may return. */
#define SANDBOX_MAX_CODE_BYTES (1ull << 30)

/* How a compile ended (sandbox_event.status). */
enum sandbox_compile_status {
    SANDBOX_COMPILE_OK = 0,        /* the code is in the server: workers forked from compile_seq on have it */
    SANDBOX_COMPILE_FAILED = 1,    /* this module cannot be compiled (wasmtime's reason, or the helper died) */
    SANDBOX_COMPILE_REFUSED = 2,   /* the compiling engine cannot run in this sandbox (e.g. MemoryDenyWriteExecute) */
};

typedef struct sandbox_event {   /* server -> parent on the events socket */
    uint32_t type;                 /* SANDBOX_MSG_COMPILED */
    uint32_t compile;              /* as in the ADD: 1 + the configuration */
    uint8_t hash[PHASE_SHA256_BYTES];
    int32_t status;                /* sandbox_compile_status */
    uint32_t has_code;             /* 1: a memfd is attached: sandbox_code_header + the code a helper just made
                                    * (for the parent's disk cache) */
    uint64_t compile_seq;          /* this event's number (1-based): READY.compile_seq >= it has the code */
    uint64_t compile_us;           /* the helper's compile time (0: the code came from the parent) */
    char message[160];             /* why it failed */
} sandbox_event;

/* What a compile helper writes into its memfd: this header, then len bytes (the code, or why it failed). The
 * helper compiled untrusted bytes: the server checks the lengths before it believes them. */
#define SANDBOX_CODE_MAGIC 0x50484357u   /* "PHCW" */
typedef struct sandbox_code_header {
    uint32_t magic;
    uint32_t ok;                   /* 1: code follows; 0: a message */
    uint64_t len;
    uint64_t compile_us;
} sandbox_code_header;

/* ---- descriptors over a unix socket (SCM_RIGHTS) ------------------------------------------ */

/* Most descriptors one message carries: a job's directories. */
#define SANDBOX_MAX_FDS PHASE_MAX_PREOPENS

/* Send len bytes with the n fds attached (none if n is 0). sendmsg's result (EINTR retried). */
static inline ssize_t sandbox_send_fds(int sock, const void *buf, size_t len, const int *fds, uint32_t n)
{
    struct iovec iov = {.iov_base = (void *) buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * SANDBOX_MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > SANDBOX_MAX_FDS) {
        errno = EINVAL;
        return -1;
    }
    if (n) {
        memset(&control, 0, sizeof control);
        mh.msg_control = control.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
    }
    ssize_t got;
    do
        got = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (got < 0 && errno == EINTR);
    return got;
}

/* Receive up to len bytes and up to max fds (close-on-exec; *nfds of them). recvmsg's result (EINTR retried). */
static inline ssize_t sandbox_recv_fds(int sock, void *buf, size_t len, int *fds, uint32_t max, uint32_t *nfds)
{
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * SANDBOX_MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    mh.msg_control = control.buf;
    mh.msg_controllen = sizeof control.buf;
    ssize_t got;
    do
        got = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    *nfds = 0;
    for (struct cmsghdr *cm = got >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        uint32_t k = (uint32_t) ((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (uint32_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            if (*nfds < max)
                fds[(*nfds)++] = fd;
            else
                close(fd);
        }
    }
    return got;
}

#endif
