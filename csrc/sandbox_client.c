/* The parent's side of a sandbox slot: hand a job to the slot's worker through shared memory, wait for
 * "done", the worker's death or the hard timeout, and turn what happened into a phase_result.
 *
 * Runs without the GIL and touches no Python. One thread at a time per slot (the Python layer keeps a
 * free list of slots).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sandbox.h"
#include "sandbox_proto.h"

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t now_ms(void)
{
    return phase_now_ns() / 1000000ull;
}

static uint64_t align64(uint64_t v)
{
    return (v + 63) & ~63ull;
}

static uint64_t strings_bytes(const phase_sandbox_job *job)
{
    uint64_t n = strlen(job->entry ? job->entry : "_start") + 1;
    for (uint32_t i = 0; i < job->argc; i++)
        n += strlen(job->argv[i]) + 1;
    for (uint32_t i = 0; i < job->envc; i++)
        n += strlen(job->envp[i]) + 1;
    for (uint32_t i = 0; i < job->npreopens; i++)
        n += strlen(job->preopens[i].guest) + 1;
    return n;
}

uint64_t phase_sandbox_job_shm_bytes(const phase_sandbox_job *job)
{
    return SANDBOX_HEADER_BYTES + align64(job->module ? job->module_len : 0) + align64(job->input_len)
           + align64(strings_bytes(job)) + job->limits.output_bytes;
}

int phase_sandbox_slot_open(phase_sandbox_slot *slot, int sock, const int *shm_fds, uint32_t depth, char *err,
                            size_t errlen)
{
    memset(slot, 0, sizeof *slot);
    slot->sock = sock;
    slot->chan = -1;
    if (depth < 1 || depth > PHASE_SANDBOX_MAX_DEPTH) {
        errf(err, errlen, "a slot has 1 to %d buffers, not %u", PHASE_SANDBOX_MAX_DEPTH, depth);
        return -1;
    }
    for (uint32_t b = 0; b < depth; b++) {
        struct stat st;
        if (fstat(shm_fds[b], &st) != 0 || st.st_size < SANDBOX_MIN_SHM_BYTES
            || (b && (size_t) st.st_size != slot->shm_bytes)) {
            errf(err, errlen, "shared memory of the slot is missing, too small or of unequal sizes");
            return -1;
        }
        slot->shm_bytes = (size_t) st.st_size;
        void *p = mmap(NULL, slot->shm_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, shm_fds[b], 0);
        if (p == MAP_FAILED) {
            errf(err, errlen, "mmap of the slot's shared memory: %s", strerror(errno));
            return -1;
        }
        slot->shms[b] = p;
        slot->depth = b + 1;
        close(shm_fds[b]);
    }
    slot->shm = slot->shms[0];
    return 0;
}

void phase_sandbox_slot_close(phase_sandbox_slot *slot)
{
    if (slot->chan >= 0)
        close(slot->chan);
    for (uint32_t i = 0; i < slot->nspares; i++)
        close(slot->spares[i].chan);
    slot->nspares = 0;
    if (slot->sock >= 0)
        close(slot->sock);
    for (uint32_t b = 0; b < slot->depth; b++)
        munmap(slot->shms[b], slot->shm_bytes);
    slot->depth = 0;
    slot->chan = slot->sock = -1;
    slot->shm = NULL;
}

/* Receive one message from the fork server (and the fd a READY carries). 1: got one; 0: timed out;
 * -1: the server is gone. */
static int recv_msg(phase_sandbox_slot *slot, sandbox_msg *msg, int *fd, int timeout_ms)
{
    struct pollfd pfd = {.fd = slot->sock, .events = POLLIN};
    int n;
    do
        n = poll(&pfd, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n == 0)
        return 0;
    if (n < 0)
        return -1;
    uint32_t nfds;
    *fd = -1;
    ssize_t got = sandbox_recv_fds(slot->sock, msg, sizeof *msg, fd, 1, &nfds);
    if (got != (ssize_t) sizeof *msg) {
        if (nfds)
            close(*fd);
        *fd = -1;
        return -1;
    }
    return 1;
}

/* The worker that will take the slot's next job: the one kept for the module's bytes, else the oldest spare. */
static void note_next(phase_sandbox_slot *slot)
{
    if (!slot->reuse && slot->nspares) {
        slot->pid = slot->spares[0].pid;
        slot->cache_seq = slot->spares[0].cache_seq;
        slot->compile_seq = slot->spares[0].compile_seq;
    }
}

/* What the server said, applied to the slot. 0: fine; -1: nonsense (the server is broken or gone);
 * NO_DESCRIPTOR: a READY whose worker channel this process could not take (no descriptor free, EMFILE). */
#define NO_DESCRIPTOR (-2)

static int handle_msg(phase_sandbox_slot *slot, const sandbox_msg *msg, int fd)
{
    if (msg->type == SANDBOX_MSG_READY && fd < 0) {
        /* That worker can never be reached: have the server kill it, so that it forks a replacement (a new
         * READY) which this process takes once it has a descriptor again. */
        sandbox_msg kill_msg = {.type = SANDBOX_MSG_KILL, .gen = msg->gen};
        if (send(slot->sock, &kill_msg, sizeof kill_msg, MSG_NOSIGNAL) != (ssize_t) sizeof kill_msg)
            return -1;
        return NO_DESCRIPTOR;
    }
    if (msg->type == SANDBOX_MSG_EXITED) {
        if (fd >= 0)
            close(fd);
        /* A spare that died before it had a job (killed from outside): drop it, it is never used. */
        for (uint32_t i = 0; i < slot->nspares; i++) {
            if (slot->spares[i].gen != msg->gen)
                continue;
            close(slot->spares[i].chan);
            memmove(slot->spares + i, slot->spares + i + 1, (slot->nspares - i - 1) * sizeof slot->spares[0]);
            slot->nspares--;
            note_next(slot);
            return 0;
        }
        slot->last_wait_status = msg->wait_status;
        slot->last_maxrss_kb = msg->maxrss_kb;
        slot->last_cpu_us = msg->cpu_us;
        if (msg->gen == slot->gen) {   /* the current worker: it died (or exited after "done") */
            slot->awaiting_exit = 0;
            slot->reuse = 0;
            if (slot->chan >= 0) {
                close(slot->chan);
                slot->chan = -1;
            }
        }
        return 0;
    }
    if (msg->type == SANDBOX_MSG_READY && fd >= 0 && msg->buffer < slot->depth
        && slot->nspares < PHASE_SANDBOX_MAX_DEPTH) {
        /* The server sends it only after the EXITED of the buffer's previous worker: the buffer is ours. */
        slot->spares[slot->nspares++] = (phase_sandbox_spare){
            .chan = fd, .gen = msg->gen, .pid = msg->pid, .buffer = msg->buffer, .cache_seq = msg->cache_seq,
            .compile_seq = msg->compile_seq};
        note_next(slot);
        return 0;
    }
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Read what the server has said so far without waiting (workers that died idle, new spares). 0; -1: the
 * server is gone; NO_DESCRIPTOR: a new spare could not be taken (no descriptor free; it is being replaced). */
static int drain(phase_sandbox_slot *slot)
{
    int short_of_fds = 0;
    for (;;) {
        sandbox_msg msg;
        int fd = -1;
        int rc = recv_msg(slot, &msg, &fd, 0);
        if (rc == 0)
            return short_of_fds ? NO_DESCRIPTOR : 0;
        if (rc < 0)
            return -1;
        int h = handle_msg(slot, &msg, fd);
        if (h == NO_DESCRIPTOR)
            short_of_fds = 1;
        else if (h != 0)
            return -1;
    }
}

static void no_descriptor(char *err, size_t errlen)
{
    errf(err, errlen, "no file descriptor free for the job's worker (%s); it will be replaced", strerror(EMFILE));
}

int phase_sandbox_slot_poll(phase_sandbox_slot *slot)
{
    int d = drain(slot);
    return d == NO_DESCRIPTOR ? 0 : d;   /* that spare is being replaced */
}

/* Wait until deadline for the server's next message and apply it. 0, or -1 with a message. */
static int await_msg(phase_sandbox_slot *slot, uint64_t deadline, int timeout_ms, char *err, size_t errlen)
{
    uint64_t now = now_ms();
    if (now >= deadline) {
        errf(err, errlen, "the sandbox's fork server did not provide a worker within %d ms", timeout_ms);
        return -1;
    }
    sandbox_msg msg;
    int fd = -1;
    int rc = recv_msg(slot, &msg, &fd, (int) (deadline - now));
    int h = rc == 1 ? handle_msg(slot, &msg, fd) : 0;
    if (h == NO_DESCRIPTOR) {
        no_descriptor(err, errlen);
        return -1;
    }
    if (rc < 0 || h != 0) {
        errf(err, errlen, "the sandbox's fork server is gone");
        return -1;
    }
    return 0;
}

int phase_sandbox_slot_ready(phase_sandbox_slot *slot, int timeout_ms, char *err, size_t errlen)
{
    uint64_t deadline = now_ms() + (uint64_t) timeout_ms;
    int d = drain(slot);
    if (d == -1) {
        errf(err, errlen, "the sandbox's fork server is gone");
        return -1;
    }
    while (slot->awaiting_exit || !(slot->reuse ? slot->chan >= 0 : slot->nspares > 0)) {
        if (d == NO_DESCRIPTOR && !slot->awaiting_exit) {   /* the worker this job needs could not be taken */
            no_descriptor(err, errlen);
            return -1;
        }
        if (await_msg(slot, deadline, timeout_ms, err, errlen) != 0)
            return -1;
    }
    return 0;
}

int phase_sandbox_slot_renew(phase_sandbox_slot *slot, uint64_t compile_seq, int timeout_ms, char *err,
                             size_t errlen)
{
    uint64_t deadline = now_ms() + (uint64_t) timeout_ms;
    for (;;) {
        int d = drain(slot);
        if (d == -1) {
            errf(err, errlen, "the sandbox's fork server is gone");
            return -1;
        }
        if (slot->reuse || (slot->nspares > 0 && slot->spares[0].compile_seq >= compile_seq))
            return 0;
        for (uint32_t i = 0; i < slot->nspares; i++) {
            phase_sandbox_spare *w = &slot->spares[i];
            if (w->compile_seq >= compile_seq || w->retiring)
                continue;
            sandbox_msg kill_msg = {.type = SANDBOX_MSG_KILL, .gen = w->gen};
            if (send(slot->sock, &kill_msg, sizeof kill_msg, MSG_NOSIGNAL) != (ssize_t) sizeof kill_msg) {
                errf(err, errlen, "the sandbox's fork server is gone");
                return -1;
            }
            w->retiring = 1;   /* its EXITED drops it; the server forks the buffer's next worker, with the code */
        }
        if (await_msg(slot, deadline, timeout_ms, err, errlen) != 0)
            return -1;
    }
}

/* Make the oldest spare the current worker (unless the current one waits for the module's bytes). */
static void take_worker(phase_sandbox_slot *slot)
{
    if (slot->reuse)
        return;
    phase_sandbox_spare w = slot->spares[0];
    memmove(slot->spares, slot->spares + 1, (slot->nspares - 1) * sizeof slot->spares[0]);
    slot->nspares--;
    if (slot->chan >= 0)
        close(slot->chan);
    slot->chan = w.chan;
    slot->gen = w.gen;
    slot->pid = w.pid;
    slot->cache_seq = w.cache_seq;
    slot->compile_seq = w.compile_seq;
    slot->shm = slot->shms[w.buffer];
}

static void write_request(phase_sandbox_slot *slot, const phase_sandbox_job *job)
{
    sandbox_shm_header *hdr = (sandbox_shm_header *) slot->shm;
    sandbox_request *req = &hdr->request;
    uint64_t pos = SANDBOX_HEADER_BYTES;
    /* This buffer's previous worker is reaped (the server forks a buffer's next worker, and sends its READY,
     * only after reaping the last one), so from here only the new worker writes the response: clear what the
     * old one may have left, including a forged done flag for this seq. */
    memset(&hdr->response, 0, sizeof hdr->response);
    memset(req, 0, sizeof *req);
    /* Nor may the new worker read the last job's module, input and output, should it break out of wasm3:
     * drop every payload page (the memfd's backing store too), so it sees zeros. Costs only the pages used. */
    if (madvise(slot->shm + SANDBOX_HEADER_BYTES, slot->shm_bytes - SANDBOX_HEADER_BYTES, MADV_REMOVE) != 0)
        memset(slot->shm + SANDBOX_HEADER_BYTES, 0, slot->shm_bytes - SANDBOX_HEADER_BYTES);
    req->magic = SANDBOX_MAGIC;
    req->version = SANDBOX_VERSION;
    req->seq = ++slot->seq;
    memcpy(req->module_hash, job->module_hash, PHASE_SHA256_BYTES);
    req->module_off = pos;
    req->module_inline = job->module != NULL;
    req->stream_output = job->output_sink != NULL;
    req->engine = (uint32_t) job->engine;
    req->module_len = job->module ? job->module_len : 0;
    if (req->module_len)
        memcpy(slot->shm + pos, job->module, req->module_len);
    pos += align64(req->module_len);
    req->input_off = pos;
    req->input_len = job->input_len;
    if (job->input_len)
        memcpy(slot->shm + pos, job->input, job->input_len);
    pos += align64(job->input_len);
    req->strings_off = pos;
    char *s = (char *) slot->shm + pos;
    const char *entry = job->entry ? job->entry : "_start";
    size_t k = strlen(entry) + 1;
    memcpy(s, entry, k);
    s += k;
    for (uint32_t i = 0; i < job->argc; i++, s += k) {
        k = strlen(job->argv[i]) + 1;
        memcpy(s, job->argv[i], k);
    }
    for (uint32_t i = 0; i < job->envc; i++, s += k) {
        k = strlen(job->envp[i]) + 1;
        memcpy(s, job->envp[i], k);
    }
    for (uint32_t i = 0; i < job->npreopens; i++, s += k) {
        k = strlen(job->preopens[i].guest) + 1;
        memcpy(s, job->preopens[i].guest, k);
        if (job->preopens[i].readonly)
            req->preopen_readonly |= 1u << i;
    }
    req->npreopens = job->npreopens;
    req->quota = job->quota;
    req->strings_len = (uint64_t) (s - ((char *) slot->shm + pos));
    pos += align64(req->strings_len);
    req->argc = job->argc;
    req->envc = job->envc;
    req->limits = job->limits;
    req->deterministic = job->deterministic;
    req->test_action = job->test_action;
    memcpy(req->seed, job->seed, sizeof req->seed);
    req->out_off = pos;
    req->out_cap = slot->shm_bytes - pos;
    /* The parent's own copies: the request in shared memory is writable by the worker. */
    slot->out_off = req->out_off;
    slot->out_cap = req->out_cap;
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    case SIGKILL: return "SIGKILL";
    case SIGSYS: return "SIGSYS";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    default: return "a signal";
    }
}

static void set_result_message(phase_result *res, phase_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_result_message(phase_result *res, phase_status status, const char *fmt, ...)
{
    res->status = status;
    res->exit_code = -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->message, sizeof res->message, fmt, ap);
    va_end(ap);
}

/* The worker died before saying "done": the result is how it died. */
static void death_result(phase_sandbox_slot *slot, const phase_sandbox_job *job, int killed_for_timeout,
                         phase_result *res)
{
    int st = slot->last_wait_status;
    if (killed_for_timeout) {
        set_result_message(res, PHASE_TIMEOUT,
                           "the worker was killed: no result within the hard timeout of %llu ms (limit %llu ms + grace)",
                           (unsigned long long) job->hard_timeout_ms, (unsigned long long) job->limits.timeout_ms);
    } else if (WIFSIGNALED(st) && (WTERMSIG(st) == SIGXCPU
                                   || (WTERMSIG(st) == SIGKILL && job->limits.timeout_ms
                                       && (uint64_t) slot->last_cpu_us / 1000 >= job->limits.timeout_ms))) {
        set_result_message(res, PHASE_TIMEOUT, "the worker exceeded its CPU time limit (%s) and was killed",
                           signal_name(WTERMSIG(st)));
    } else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS) {
        set_result_message(res, PHASE_CRASHED,
                           "the worker was killed by SIGSYS: it made a system call its seccomp filter forbids");
    } else if (WIFSIGNALED(st)) {
        set_result_message(res, PHASE_CRASHED, "the worker was killed by %s (signal %d) mid-job; it was replaced",
                           signal_name(WTERMSIG(st)), WTERMSIG(st));
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == SANDBOX_EXIT_NO_SECCOMP) {
        set_result_message(res, PHASE_CRASHED, "the worker could not confine itself: seccomp(2) is not available on "
                           "this system (ENOSYS: a kernel without seccomp filters, or qemu-user emulation)");
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == SANDBOX_EXIT_SETUP) {
        set_result_message(res, PHASE_CRASHED, "the worker could not confine itself (rlimits or seccomp failed)");
    } else {
        set_result_message(res, PHASE_CRASHED, "the worker exited with code %d without a result",
                           WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
}

static int copy_response(phase_sandbox_slot *slot, const phase_sandbox_job *job, phase_result *res,
                         const uint8_t input_hash[PHASE_SHA256_BYTES])
{
    /* Untrusted: check everything against the request we wrote. */
    const sandbox_shm_header *hdr = (const sandbox_shm_header *) slot->shm;
    sandbox_response r = hdr->response;
    /* Offsets and sizes from the parent's copies, never from the shared request (the worker can rewrite it). */
    if (r.seq != slot->seq || r.status < 0 || r.status >= PHASE_STATUS_COUNT || r.out_len > slot->out_cap
        || r.err_len > slot->out_cap - r.out_len) {
        set_result_message(res, PHASE_CRASHED, "the worker returned a malformed result");
        goto hashes;
    }
    r.message[sizeof r.message - 1] = 0;
    res->status = (phase_status) r.status;
    res->exit_code = r.exit_code;
    res->fs_unavailable = r.fs_unavailable != 0;
    res->fs_limit = r.fs_limit == PHASE_FS_LIMIT_BYTES || r.fs_limit == PHASE_FS_LIMIT_FILES ? (int) r.fs_limit : 0;
    memcpy(res->message, r.message, sizeof res->message);
    if (r.oom && res->status == PHASE_CRASHED) {
        char inner[PHASE_MESSAGE_BYTES];
        memcpy(inner, res->message, sizeof inner);
        set_result_message(res, PHASE_MEMORY_LIMIT, "the worker ran out of its address-space limit (%s)", inner);
    }
    if (r.out_len) {
        res->out = malloc(r.out_len);
        if (!res->out)
            return -1;
        memcpy(res->out, slot->shm + slot->out_off, r.out_len);
    }
    if (r.err_len) {
        res->err = malloc(r.err_len);
        if (!res->err)
            return -1;
        memcpy(res->err, slot->shm + slot->out_off + r.out_len, r.err_len);
    }
    res->out_len = r.out_len;
    res->err_len = r.err_len;
    res->fuel_used = r.fuel_used;
    res->wall_us = r.wall_us;
    res->memory_peak_bytes = r.memory_peak_bytes;
    /* Hashes go into signed receipts: compute them here from what the parent knows and what it copied,
     * never take them from the worker. */
hashes:
    memcpy(res->module_hash, job->module_hash, PHASE_SHA256_BYTES);
    memcpy(res->input_hash, input_hash, PHASE_SHA256_BYTES);
    phase_sha256(res->out, res->out_len, res->stdout_hash);
    phase_sha256(res->err, res->err_len, res->stderr_hash);
    return 0;
}

/* Wait for the EXITED message of the current worker (after its channel closed or we asked for a kill). */
static int wait_exited(phase_sandbox_slot *slot, char *err, size_t errlen)
{
    uint64_t deadline = now_ms() + 30000;
    while (slot->awaiting_exit) {
        uint64_t now = now_ms();
        sandbox_msg msg;
        int fd = -1;
        int rc = now < deadline ? recv_msg(slot, &msg, &fd, (int) (deadline - now)) : 0;
        int h = rc == 1 ? handle_msg(slot, &msg, fd) : 0;
        if (rc <= 0 || (h != 0 && h != NO_DESCRIPTOR)) {   /* a spare without a channel is being replaced */
            errf(err, errlen, rc == 0 ? "the fork server did not report the worker's end" : "the sandbox's fork server is gone");
            return -1;
        }
    }
    return 0;
}

uint32_t phase_sandbox_stop_request(phase_sandbox_stop *stop)
{
    __atomic_store_n(&stop->stopped, 1, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&stop->gen, __ATOMIC_SEQ_CST);
}

/* Publish the generation of the worker the job is about to get, then see whether its stop was requested (see
 * phase_sandbox_stop). Stopped: the worker kept waiting for this job's module (reuse) is killed, never given
 * another job; a spare stays for the next one. 1 when stopped (no "go" may be sent), else 0. */
static int stopped_before_go(phase_sandbox_slot *slot, const phase_sandbox_job *job, char *err, size_t errlen)
{
    if (!job->stop)
        return 0;
    uint32_t gen = slot->reuse ? slot->gen : slot->spares[0].gen;
    __atomic_store_n(&job->stop->gen, gen, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&job->stop->stopped, __ATOMIC_SEQ_CST))
        return 0;
    if (slot->reuse) {
        sandbox_msg kill_msg = {.type = SANDBOX_MSG_KILL, .gen = slot->gen};
        (void) send(slot->sock, &kill_msg, sizeof kill_msg, MSG_NOSIGNAL);   /* server gone: the next job says so */
        close(slot->chan);
        slot->chan = -1;
        slot->reuse = 0;
        slot->awaiting_exit = 1;   /* the next job waits for its EXITED */
        note_next(slot);
    }
    errf(err, errlen, "the job was stopped before it started");
    return 1;
}

/* "go": one byte, with the job's preopened directories attached (SCM_RIGHTS) when it has any. */
static ssize_t send_go(int chan, const phase_sandbox_job *job)
{
    int fds[PHASE_MAX_PREOPENS];
    for (uint32_t i = 0; i < job->npreopens; i++)
        fds[i] = job->preopens[i].fd;
    return sandbox_send_fds(chan, "g", 1, fds, job->npreopens);
}

int phase_sandbox_slot_run(phase_sandbox_slot *slot, const phase_sandbox_job *job, phase_result *res, char *err,
                           size_t errlen)
{
    if (job->npreopens > PHASE_MAX_PREOPENS) {
        errf(err, errlen, "at most %d preopened directories", PHASE_MAX_PREOPENS);
        return -1;
    }
    memset(res, 0, sizeof *res);
    res->exit_code = -1;
    if (phase_sandbox_job_shm_bytes(job) > slot->shm_bytes) {
        errf(err, errlen, "the job needs %llu bytes of shared memory (input, module, output limit); the sandbox has %zu",
             (unsigned long long) phase_sandbox_job_shm_bytes(job), slot->shm_bytes);
        return -1;
    }
    ssize_t w;
    for (unsigned attempt = 0;; attempt++) {
        if (phase_sandbox_slot_ready(slot, 30000, err, errlen) != 0)
            return -1;
        if (stopped_before_go(slot, job, err, errlen))
            return 2;
        take_worker(slot);
        write_request(slot, job);
        /* From "go" on, the worker is responsible for this job until it says "done" or dies. */
        slot->awaiting_exit = 1;
        slot->t_go_ns = phase_now_ns();
        do
            w = send_go(slot->chan, job);
        while (w < 0 && errno == EINTR);
        if (w == 1 || attempt >= 2 * PHASE_SANDBOX_MAX_DEPTH)
            break;
        /* Its channel is closed: the worker died while idle (it only exits, and it closes nothing before
         * "go"), so it never read this request. Its EXITED is a spare's death; the job goes to the next one. */
        close(slot->chan);
        slot->chan = -1;
        slot->awaiting_exit = 0;
        slot->reuse = 0;
    }

    /* The input's hash (for the receipt) while the worker runs: a long job's big input costs it nothing then. */
    uint8_t input_hash[PHASE_SHA256_BYTES];
    phase_sha256(job->input, job->input_len, input_hash);
    uint64_t start = now_ms();
    int killed_for_timeout = 0;
    int done = 0;
    const sandbox_shm_header *shdr = (const sandbox_shm_header *) slot->shm;
    /* Streaming: the worker's chunks arrive on the channel before its "done" (never spin past them). */
    uint8_t *chunk = NULL;
    if (w == 1 && job->output_sink) {
        chunk = malloc(1 + SANDBOX_CHUNK_BYTES);
        if (!chunk) {
            errf(err, errlen, "out of memory for a job's streamed output");
            return -1;
        }
    }
    uint64_t streamed = 0;
    int sink_stopped = 0;
    if (w == 1 && job->spin_us && !chunk) {
        /* A tiny job finishes within microseconds; waking a sleeping thread on another CPU costs ~50-100 us
         * on small VMs. Watch the shared flag for a while first. */
        uint64_t until = slot->t_go_ns + (uint64_t) job->spin_us * 1000ull;
        while (__atomic_load_n(&shdr->response.done_seq, __ATOMIC_ACQUIRE) != slot->seq) {
            if (phase_now_ns() >= until)
                break;
#if defined(__x86_64__)
            __builtin_ia32_pause();
#endif
        }
        if (__atomic_load_n(&shdr->response.done_seq, __ATOMIC_ACQUIRE) == slot->seq) {
            done = 1;
            if (shdr->response.module_missing) {   /* the worker stays: consume its "done" byte */
                char c;
                if (recv(slot->chan, &c, 1, 0) != 1)
                    done = 0;
            }
        }
    }
    if (w == 1 && !done) {
        struct pollfd pfd = {.fd = slot->chan, .events = POLLIN};
        for (;;) {
            int timeout = -1;
            if (job->hard_timeout_ms && !killed_for_timeout) {
                uint64_t elapsed = now_ms() - start;
                timeout = elapsed >= job->hard_timeout_ms ? 0 : (int) (job->hard_timeout_ms - elapsed);
            }
            int n = poll(&pfd, 1, timeout);
            if (n < 0 && errno == EINTR)
                continue;
            if (n == 0) {
                /* Hard timeout: only the fork server knows the worker for sure; it kills it. */
                sandbox_msg kill_msg = {.type = SANDBOX_MSG_KILL, .gen = slot->gen};
                if (send(slot->sock, &kill_msg, sizeof kill_msg, MSG_NOSIGNAL) != (ssize_t) sizeof kill_msg) {
                    errf(err, errlen, "the sandbox's fork server is gone");
                    return -1;
                }
                killed_for_timeout = 1;
                continue;
            }
            uint8_t c[1];
            uint8_t *got = chunk ? chunk : c;
            ssize_t r = recv(slot->chan, got, chunk ? 1 + SANDBOX_CHUNK_BYTES : 1, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (chunk && r > 1 && (got[0] == SANDBOX_CHUNK_STDOUT || got[0] == SANDBOX_CHUNK_STDERR)) {
                /* Untrusted: never more than the job's output limit reaches the sink. */
                uint64_t room = streamed < job->limits.output_bytes ? job->limits.output_bytes - streamed : 0;
                size_t n = (size_t) r - 1 < room ? (size_t) r - 1 : (size_t) room;
                if (n && !sink_stopped
                    && job->output_sink(job->output_ctx, got[0] == SANDBOX_CHUNK_STDOUT ? 1 : 2, got + 1, n) != 0)
                    sink_stopped = 1;
                streamed += n;
                continue;
            }
            done = r == 1 && got[0] == SANDBOX_DONE;
            break;   /* done, or EOF/error: the worker died */
        }
    }
    free(chunk);
    if (done) {
        slot->t_done_ns = phase_now_ns();
        const sandbox_shm_header *hdr = (const sandbox_shm_header *) slot->shm;
        if (hdr->response.module_missing && hdr->response.seq == slot->seq) {
            slot->awaiting_exit = 0;   /* the same worker waits for the bytes */
            slot->reuse = 1;
            return 1;
        }
        slot->reuse = 0;
        slot->t_ready_ns = hdr->response.t_ready_ns;
        slot->t_woke_ns = hdr->response.t_woke_ns;
        slot->t_confined_ns = hdr->response.t_confined_ns;
        slot->t_ran_ns = hdr->response.t_ran_ns;
        /* The worker exits by itself. The next job needs not wait for that: it runs on another buffer's worker. */
        close(slot->chan);
        slot->chan = -1;
        slot->awaiting_exit = 0;
        note_next(slot);
        if (hdr->response.uncompiled && hdr->response.seq == slot->seq && job->engine == PHASE_ENGINE_WASMTIME)
            return 3;
        if (copy_response(slot, job, res, input_hash) != 0) {
            phase_result_clear(res);
            errf(err, errlen, "out of memory copying a job's output");
            return -1;
        }
        return 0;
    }
    slot->reuse = 0;
    if (wait_exited(slot, err, errlen) != 0)
        return -1;
    note_next(slot);
    death_result(slot, job, killed_for_timeout, res);
    memcpy(res->module_hash, job->module_hash, PHASE_SHA256_BYTES);
    memcpy(res->input_hash, input_hash, PHASE_SHA256_BYTES);
    phase_sha256(NULL, 0, res->stdout_hash);
    phase_sha256(NULL, 0, res->stderr_hash);
    res->wall_us = (now_ms() - start) * 1000;
    return 0;
}
