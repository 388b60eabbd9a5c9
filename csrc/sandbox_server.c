/* The fork server and its workers.
 *
 * The fork server is a small single-threaded process (exec'd, so it inherits nothing of the node: no
 * keys, no threads, no Python heap). It holds the modules the parent asked it to cache (validated by
 * phase_module_new here, after a sandboxed worker validated the same bytes without incident) and keeps
 * one pre-forked worker per buffer; a slot has 1 + spares buffers, so its next job finds a worker set up
 * while the used ones are replaced. A worker inherits the cache and its buffer's shared memory (only
 * that one), confines itself (capabilities, no_new_privs, seccomp), waits for "go", sets the job's
 * rlimits, runs it, writes the result into the shared memory, says "done" and exits. The server reaps
 * it, tells the parent how it ended, and forks the buffer's next one.
 *
 * With --wasmtime PATH the server also runs the compiling engine's jobs: it loads wasmtime's C API and, when the
 * parent's ADD asks, has a cached module compiled by a compile helper: a single-use process forked from this one
 * (which never runs a stranger's code), confined, that compiles that one module and writes its code into a memfd,
 * while this loop keeps forking workers. The server loads the code (or code the parent read from its disk cache)
 * before any later fork, so workers inherit it copy-on-write, tells the parent on the events socket, and its
 * workers never compile (phase_wasmtime_set_compiling(0)); they advance the epoch from a SIGALRM timer instead of
 * a ticker thread. See docs/SANDBOX.md, "Engines".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "phase_arena.h"
#include "phase_wasmtime.h"
#include "sandbox.h"
#include "sandbox_proto.h"

#define MAX_SLOTS 256
#define CACHE_MAX 64
#define CACHE_MAX_BYTES (256u << 20)
/* Address space reserved for building a cached module of len bytes (phase_arena_open). */
#define ARENA_RESERVE(len) ((64ull << 20) + 16ull * (uint64_t) (len))
#define WORKER_FD 3                       /* the worker's channel, after it tidies its fds */
/* Address space a worker may use beyond what it inherits, its linear memory and its output:
 * wasm3's compiled code and runtime structures, the native stack, libc. */
#define WORKER_AS_SLACK (96ull << 20)
#define WORKER_STACK_BYTES (8ull << 20)
/* A compiling-engine job's address space beyond that: its linear memory's reservation and guards (PROT_NONE
 * until the store limiter lets it grow) and wasmtime's own runtime structures. */
#define WORKER_WASMTIME_AS (PHASE_WASMTIME_RESERVATION + 2 * PHASE_WASMTIME_GUARD + (64ull << 20))

typedef struct srv_slot {
    int sock;
    uint32_t gen;              /* generation of the slot's newest worker (over all its buffers) */
} srv_slot;

/* A slot has up to SANDBOX_MAX_DEPTH buffers, each with its own memfd and at most one worker at a time:
 * a spare forked on a free buffer is ready while the slot's current job runs on another one. A buffer
 * gets its next worker only after its last one was reaped, so no worker ever sees another job's memory. */
typedef struct srv_buffer {
    unsigned slot, index;
    uint8_t *shm;
    size_t shm_bytes;
    pid_t pid;                 /* 0: no worker */
    uint32_t gen;              /* its worker's generation within the slot */
    uint64_t respawn_at_ns;    /* after a worker failed its own set-up: not before this */
} srv_buffer;

static srv_slot slots[MAX_SLOTS];
static unsigned nslots;
static srv_buffer buffers[MAX_SLOTS * SANDBOX_MAX_DEPTH];
static unsigned nbuffers;
static int main_sock = -1;
static int devnull = -1;
static pid_t server_pid;
static phase_module *cache[CACHE_MAX];
static size_t cache_cost[CACHE_MAX];   /* memory each cached module really holds (see cache_add) */
static unsigned cache_count;
static size_t cache_bytes;
static uint64_t cache_seq;          /* ADD messages processed (accepted or not) */
/* The compiling engine (--wasmtime): per cached module, the engine configurations whose compile failed and why. */
static const char *wasmtime_path;  /* --wasmtime: the compiling engine's library, loaded at the first compile */
static int wasmtime_on;            /* that library is loaded (workers forked since have it) */
/* Set up on the first compile, not at start (an idle node keeps the ~12 MiB wasmtime's compiler touches):
 * 1 once the warm-up ran, so workers forked from then on get the epoch timer in their filter; jit_failure says why
 * it could not be (e.g. MemoryDenyWriteExecute), and every compiling-engine job is then refused with it. */
static int jit_ready;
static char jit_failure[200];
static uint8_t cache_failed[CACHE_MAX];
static char cache_failure[CACHE_MAX][160];
/* Configurations of each cached module waiting for a compile helper, and being compiled by one. */
static uint8_t cache_queued[CACHE_MAX];
static uint8_t cache_compiling[CACHE_MAX];

/* Compile helpers at once: each takes a CPU for as long as Cranelift needs (seconds for a big module). */
#define HELPERS_MAX 2
#define HELPER_FD 3
/* A helper's bounds: CPU seconds (SIGXCPU ends a compile that never ends), and address space beyond what it
 * inherits: Cranelift's working memory and the code it makes, for a module of len bytes. */
#define HELPER_CPU_SECONDS 600
#define HELPER_NICE 10
#define HELPER_AS_BYTES(len) ((2ull << 30) + 64ull * (uint64_t) (len))
typedef struct srv_helper {
    pid_t pid;                 /* 0: free */
    int memfd;                 /* where it writes sandbox_code_header + the code */
    uint8_t hash[PHASE_SHA256_BYTES];
    uint32_t compile;          /* 1 + configuration */
} srv_helper;
static srv_helper helpers[HELPERS_MAX];
static int events_sock = -1;       /* COMPILED events to the parent */
static uint64_t compile_seq;       /* COMPILED events sent */
/* The kernel's Landlock ABI (0: none). Without it workers get no file system calls at all and a job with
 * directories is refused, since nothing else would bound the paths a worker that broke out of wasm3 could name. */
static int landlock_abi;

static void fatal(const char *what)
{
    fprintf(stderr, "phase-sandboxd: %s: %s\n", what, strerror(errno));
    _exit(2);
}

/* ---- module cache (server side; workers inherit it) ---------------------------------------- */

/* Provided by the core when it can pre-instantiate a module (see docs/SANDBOX.md); weak until then. */
__attribute__((weak)) int phase_module_prepare(phase_module *module, const phase_limits *limits, char *err,
                                               size_t errlen);

static int cache_index(const uint8_t *hash)
{
    for (unsigned i = 0; i < cache_count; i++)
        if (memcmp(cache[i]->hash, hash, PHASE_SHA256_BYTES) == 0)
            return (int) i;
    return -1;
}

static phase_module *cache_find(const uint8_t *hash)
{
    int i = cache_index(hash);
    return i < 0 ? NULL : cache[i];
}

/* This process's resident memory in bytes (0 if /proc cannot tell). */
static size_t resident_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (size_t) resident * (size_t) sysconf(_SC_PAGESIZE);
}

/* Bytes malloc has handed out, where glibc counts them (0 elsewhere). */
static size_t malloc_bytes(void)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#else
    return 0;
#endif
}

static size_t grew(size_t before, size_t after)
{
    return after > before ? after - before : 0;
}

/* Threads of this process (0 if /proc cannot tell): the server must stay at one to fork safely. */
static int thread_count(void)
{
    char line[128];
    int n = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

static void check_single_threaded(const char *after)
{
    if (thread_count() > 1) {
        fprintf(stderr, "phase-sandboxd: %s started a thread; forking workers would be unsafe\n", after);
        _exit(2);
    }
}

/* The limits and mode of a job on the compiling engine's configuration index (fuel metering | NaNs << 1). */
static void limits_for_engine_index(unsigned index, phase_limits *lim, int *deterministic)
{
    phase_limits_default(lim);
    lim->fuel = index & 1;
    *deterministic = (int) (index >> 1) & 1;
    if (!((index >> 2) & 1))
        lim->timeout_ms = 0;   /* no epoch checks: a job without a wall-clock limit */
}

static int jit_set_up(void);
static void note_vm_size(void);
static void shutdown_all(int code);
static void start_helpers(void);

/* Tell the parent how a compile it asked for ended; workers forked from now on carry the new compile_seq. The memfd
 * (code_fd >= 0) holds the code a helper made, for the parent's disk cache. */
static void send_event(const uint8_t *hash, uint32_t compile, int status, int code_fd, uint64_t compile_us,
                       const char *message)
{
    sandbox_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = SANDBOX_MSG_COMPILED;
    ev.compile = compile;
    memcpy(ev.hash, hash, PHASE_SHA256_BYTES);
    ev.status = status;
    ev.has_code = code_fd >= 0;
    ev.compile_seq = ++compile_seq;
    ev.compile_us = compile_us;
    snprintf(ev.message, sizeof ev.message, "%s", message ? message : "");
    if (events_sock >= 0 && sandbox_send_fds(events_sock, &ev, sizeof ev, &code_fd, code_fd >= 0 ? 1 : 0)
                                != (ssize_t) sizeof ev)
        shutdown_all(0);   /* the parent is gone */
}

/* Load the compiling engine's library, once, when the first module is to be compiled or given its code
 * (jit_set_up): until then workers are forked from a smaller process (its mappings and relocated pages cost every wasm3 job's fork
 * and exit ~10%). Single-threaded as before: nothing here starts a thread. 1 when loaded; 0 with jit_failure. */
static int wasmtime_load_now(void)
{
    if (wasmtime_on || jit_failure[0])
        return wasmtime_on;
    char err[160];
    if (phase_wasmtime_load(wasmtime_path, err, sizeof err) != 0) {
        snprintf(jit_failure, sizeof jit_failure, "the compiling engine cannot run in this sandbox: %.150s", err);
        return 0;
    }
    phase_wasmtime_set_ticker(0);
    if (phase_wasmtime_tick_on(SIGALRM) != 0)   /* workers inherit it: their epoch timer */
        fatal("sigaction");
    wasmtime_on = 1;
    check_single_threaded("loading the compiling engine");
    note_vm_size();
    return 1;
}

/* Load code for cached module i (configuration index) into this process, where workers forked later inherit it;
 * its memory counts toward the cache's cap. 0, or -1 with err. */
static int cache_load_code(unsigned i, unsigned index, const uint8_t *code, size_t len, char *err, size_t errlen)
{
    phase_limits lim;
    int det;
    limits_for_engine_index(index, &lim, &det);
    size_t resident_before = resident_bytes(), malloc_before = malloc_bytes();
    int rc = phase_wasmtime_deserialize(cache[i], &lim, det, code, len, err, errlen);
    check_single_threaded("loading compiled code");
    size_t cost = grew(malloc_before, malloc_bytes()) + grew(resident_before, resident_bytes());
    cache_cost[i] += cost;
    cache_bytes += cost;
    return rc;
}

/* The parent asked for cached module i's code for configuration compile - 1: load the code it sent (read from its
 * disk cache), or queue the module for a compile helper. Every request is answered by one COMPILED event. */
static void cache_compile(unsigned i, uint32_t compile, const uint8_t *code, size_t code_len)
{
    const uint8_t *hash = cache[i]->hash;
    if (!wasmtime_path || compile == 0 || compile > PHASE_WASMTIME_CONFIGS) {
        send_event(hash, compile, SANDBOX_COMPILE_REFUSED, -1, 0, "this sandbox was started without the compiling engine");
        return;
    }
    if (!jit_set_up()) {
        send_event(hash, compile, SANDBOX_COMPILE_REFUSED, -1, 0, jit_failure);
        return;
    }
    unsigned index = compile - 1;
    phase_limits lim;
    int det;
    limits_for_engine_index(index, &lim, &det);
    if ((cache_failed[i] >> index) & 1) {
        send_event(hash, compile, SANDBOX_COMPILE_FAILED, -1, 0, cache_failure[i]);
        return;
    }
    if (phase_wasmtime_is_compiled(cache[i], &lim, det)) {
        send_event(hash, compile, SANDBOX_COMPILE_OK, -1, 0, NULL);
        return;
    }
    char err[160];
    if (code && cache_load_code(i, index, code, code_len, err, sizeof err) == 0) {
        send_event(hash, compile, SANDBOX_COMPILE_OK, -1, 0, NULL);
        return;
    }
    /* No code, or code wasmtime refused (another build): compile it. One event when the helper is done. */
    if (!(((cache_queued[i] | cache_compiling[i]) >> index) & 1))
        cache_queued[i] |= (uint8_t) (1u << index);
    start_helpers();
}

/* Add the module whose `bytes` handle_main read into `arena` (the heap when it has none): both are the cache's from
 * here on, kept with the module or freed. */
static void cache_add(phase_arena *arena, uint8_t *bytes, size_t len, uint32_t compile, const uint8_t *code,
                      size_t code_len)
{
    char err[256];
    uint8_t hash[PHASE_SHA256_BYTES];
    phase_sha256(bytes, len, hash);
    int found = cache_index(hash);
    if (found >= 0) {
        if (arena)
            phase_arena_free(arena);
        else
            free(bytes);
        if (compile)
            cache_compile((unsigned) found, compile, code, code_len);
        return;
    }
    size_t resident_before = resident_bytes(), malloc_before = malloc_bytes();
    phase_module *m = phase_module_new_in_place(bytes, len, hash, err, sizeof err);
    if (!m && !arena)
        free(bytes);   /* in an arena they go with it */
    /* wasm3's code for every function and a prepared instance: what a wasm3 job starts from. Not for a module added
     * to be compiled: its jobs run on the compiling engine (a sandbox's wasm3 jobs go to a fork server without it),
     * and a wasm3 job of it compiles what it calls. */
    if (m && phase_module_prepare && !compile) {
        phase_limits lim;
        phase_limits_default(&lim);
        (void) phase_module_prepare(m, &lim, err, sizeof err);
    }
    if (arena && phase_arena_finish(arena) != 0) {
        /* still writable through its shared mapping, which every worker would inherit: not cached */
        if (m) {
            m->arena = arena;
            phase_module_free(m);
        } else {
            phase_arena_free(arena);
        }
        m = NULL;
        snprintf(err, sizeof err, "cannot seal the module's memory: %s", strerror(errno));
    } else if (m) {
        m->arena = arena;
    } else {
        phase_arena_free(arena);
    }
    /* the validator's and the compiler's temporaries: give their pages back rather than fork them */
    malloc_trim(0);
    if (!m) {
        /* the worker that ran it already reported why; later workers get the bytes again */
        if (compile)
            send_event(hash, compile, SANDBOX_COMPILE_FAILED, -1, 0, err);
        return;
    }
    /* What the module holds is its bytes, its parsed code and a prepared instance (its memory with the data
       segments copied in, mapped apart from malloc): about twice its bytes, more with wasm3's compiled code.
       Counted as what it took from its arena and from malloc (reused pages too) plus the pages it made
       resident (the instance's): never less than it holds, so the cap is a bound. */
    size_t cost = phase_arena_bytes(arena) + grew(malloc_before, malloc_bytes())
                  + grew(resident_before, resident_bytes());
    cost = cost > len ? cost : len;
    /* Drop the oldest until it fits (count and bytes: the server's memory is every worker's too). */
    while (cache_count && (cache_count == CACHE_MAX || cache_bytes + cost > CACHE_MAX_BYTES)) {
        cache_bytes -= cache_cost[0];
        memmove(cache_failure, cache_failure + 1, (cache_count - 1) * sizeof cache_failure[0]);
        /* a queued compile of it is dropped (its helper, if one runs, finds the module gone): answer it */
        for (unsigned index = 0; index < PHASE_WASMTIME_CONFIGS; index++)
            if ((cache_queued[0] >> index) & 1)
                send_event(cache[0]->hash, index + 1, SANDBOX_COMPILE_FAILED, -1, 0,
                           "evicted from the fork server's cache before it was compiled");
        phase_module_free(cache[0]);
        memmove(cache, cache + 1, (cache_count - 1) * sizeof cache[0]);
        memmove(cache_cost, cache_cost + 1, (cache_count - 1) * sizeof cache_cost[0]);
        memmove(cache_failed, cache_failed + 1, (cache_count - 1) * sizeof cache_failed[0]);
        memmove(cache_queued, cache_queued + 1, (cache_count - 1) * sizeof cache_queued[0]);
        memmove(cache_compiling, cache_compiling + 1, (cache_count - 1) * sizeof cache_compiling[0]);
        cache_count--;
    }
    cache[cache_count] = m;
    cache_failed[cache_count] = 0;
    cache_queued[cache_count] = 0;
    cache_compiling[cache_count] = 0;
    cache_cost[cache_count++] = cost;
    cache_bytes += cost;
    if (compile)
        cache_compile(cache_count - 1, compile, code, code_len);
}


/* ---- the worker ---------------------------------------------------------------------------- */

/* The server's address-space size, the base of every worker's RLIMIT_AS. Read from /proc in the server
 * (at start and whenever its cache changes), not in each worker: opening /proc and stdio's buffers cost a
 * worker ~40 us of system calls and copy-on-write faults. */
static uint64_t server_vm_bytes;

static void note_vm_size(void)
{
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    server_vm_bytes = pages * (uint64_t) sysconf(_SC_PAGESIZE);
}

static int set_limit(int resource, uint64_t value)
{
    struct rlimit rl = {.rlim_cur = value, .rlim_max = value};
    return setrlimit(resource, &rl);
}

/* Before waiting for a job: no capabilities (so no rlimit can be raised again), no_new_privs and the
 * seccomp filter. Done ahead because installing a filter costs ~100 us (the kernel checks, compiles and emulates
 * it). */
static int worker_jit;   /* in a worker: its filter allows the compiling engine's epoch timer */

static int confine_early(void)
{
    worker_jit = jit_ready;
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &head, data) != 0)
        return -1;
    return phase_sandbox_seccomp_install(landlock_abi > 0, jit_ready);
}

/* The job's rlimits, set through the filter's one allowed prlimit64 (pid 0). */
static int confine(const sandbox_request *req, uint64_t base_vm, size_t module_len)
{
    uint64_t as = base_vm + WORKER_AS_SLACK + WORKER_STACK_BYTES + req->limits.memory_bytes
                  + 2 * req->limits.output_bytes + 16 * req->module_len + 2 * (uint64_t) req->limits.stack_bytes
                  + phase_compile_stack_bound(module_len);
    if (req->engine == PHASE_ENGINE_WASMTIME)
        as += WORKER_WASMTIME_AS;
    /* Descriptors: the channel, the directories received, the job's own copies of them and its table. Files
     * may grow only where the job was given a writable directory, and with a quota to its disk_bytes at most (a
     * backstop: the WASI layer refuses before that). */
    uint64_t nofile = WORKER_FD + 1 + (req->npreopens ? 2ull * req->npreopens + PHASE_MAX_FDS + 8 : 0);
    int writable = req->npreopens && req->preopen_readonly != (uint32_t) ((1ull << req->npreopens) - 1);
    if (set_limit(RLIMIT_AS, as) != 0 || set_limit(RLIMIT_CORE, 0) != 0
        || set_limit(RLIMIT_FSIZE, !writable ? 0 : req->quota.enabled ? req->quota.max_bytes : RLIM_INFINITY) != 0
        || set_limit(RLIMIT_NOFILE, nofile) != 0)
        return -1;
    if (req->limits.timeout_ms) {
        /* A backstop below the parent's hard timeout: CPU seconds, SIGXCPU then SIGKILL one second later. */
        uint64_t secs = (req->limits.timeout_ms + 999) / 1000 + 1;
        struct rlimit rl = {.rlim_cur = secs, .rlim_max = secs + 1};
        if (setrlimit(RLIMIT_CPU, &rl) != 0)
            return -1;
    }
    return 0;
}

static void say_done(sandbox_response *resp)
{
    /* The flag first (a spinning parent sees it without a wake-up), then the byte (a sleeping one wakes). */
    __atomic_store_n(&resp->done_seq, resp->seq, __ATOMIC_RELEASE);
    char d = SANDBOX_DONE;
    if (write(WORKER_FD, &d, 1) != 1)
        _exit(SANDBOX_EXIT_IDLE);
}

/* The job's output sink in a worker: each piece goes to the parent as chunk messages on the channel. A parent that
 * stopped reading makes the write fail, and the job sees EPIPE. */
static int send_chunks(void *ctx, int stream, const uint8_t *bytes, size_t len)
{
    static uint8_t msg[1 + SANDBOX_CHUNK_BYTES];
    (void) ctx;
    while (len) {
        size_t n = len < SANDBOX_CHUNK_BYTES ? len : SANDBOX_CHUNK_BYTES;
        msg[0] = stream == 1 ? SANDBOX_CHUNK_STDOUT : SANDBOX_CHUNK_STDERR;
        memcpy(msg + 1, bytes, n);
        ssize_t w;
        do
            w = write(WORKER_FD, msg, n + 1);
        while (w < 0 && errno == EINTR);
        if (w != (ssize_t) (n + 1))
            return -1;
        bytes += n;
        len -= n;
    }
    return 0;
}

static void respond_message(sandbox_response *resp, phase_status status, const char *text)
{
    resp->status = status;
    resp->exit_code = -1;
    snprintf(resp->message, sizeof resp->message, "%s", text);
}

static int in_bounds(uint64_t off, uint64_t len, size_t size)
{
    return off >= SANDBOX_HEADER_BYTES && off <= size && len <= size - off;
}

static void test_action(uint32_t action)
{
    switch (action) {
    case SANDBOX_TEST_FORBIDDEN_SYSCALL:
        (void) socket(AF_INET, SOCK_STREAM, 0);
        break;
    case SANDBOX_TEST_SEGFAULT: {
        /* A real fault (raise() needs tgkill, which the filter forbids). */
        volatile int *volatile bad = (volatile int *) (uintptr_t) 16;
        *bad = 1;
        break;
    }
    case SANDBOX_TEST_SPIN:
        for (volatile uint64_t i = 0;; i++)
            ;
    case SANDBOX_TEST_EXEC_MMAP:
        (void) mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        break;
    case SANDBOX_TEST_TIMER: {
        struct itimerval later = {.it_interval = {0, 0}, .it_value = {100, 0}};
        (void) setitimer(ITIMER_REAL, &later, NULL);
        break;
    }
    default:
        break;
    }
}

/* Split the strings region into entry, argv and envp. Returns 0 or -1 if it is malformed. */
static int split_strings(const char *s, uint64_t len, uint32_t argc, uint32_t envc, uint32_t npre,
                         const char **entry, const char ***argv, const char ***envp, const char ***guests)
{
    uint64_t need = 1ull + argc + envc + npre;
    if (argc > (1u << 20) || envc > (1u << 20) || npre > PHASE_MAX_PREOPENS || len == 0 || s[len - 1] != 0)
        return -1;
    const char **ptrs = malloc(need * sizeof *ptrs);
    if (!ptrs)
        return -1;
    uint64_t pos = 0;
    for (uint64_t k = 0; k < need; k++) {
        if (pos >= len) {
            free(ptrs);
            return -1;
        }
        ptrs[k] = s + pos;
        pos += strlen(s + pos) + 1;
    }
    *entry = ptrs[0];
    *argv = ptrs + 1;
    *envp = ptrs + 1 + argc;
    *guests = ptrs + 1 + argc + envc;
    return 0;
}

/* "go" and the directory fds that came with it (none when the kernel has no Landlock: then the worker reads a
 * plain byte, and the filter allows no recvmsg). Fds of an earlier "go" (module missing, sent again) are closed. */
typedef struct received_go {
    int fds[PHASE_MAX_PREOPENS];
    uint32_t n;
} received_go;

static ssize_t receive_go(received_go *go)
{
    char c;
    for (uint32_t i = 0; i < go->n; i++)
        close(go->fds[i]);
    go->n = 0;
    if (!landlock_abi)
        return read(WORKER_FD, &c, 1);
    return sandbox_recv_fds(WORKER_FD, &c, 1, go->fds, PHASE_MAX_PREOPENS, &go->n);
}

static void worker_run(sandbox_shm_header *hdr, size_t shm_bytes, uint64_t base_vm)
{
    uint8_t *shm = (uint8_t *) hdr;
    received_go go = {.n = 0};
    for (;;) {
        uint64_t ready = phase_now_ns();
        if (receive_go(&go) != 1)
            _exit(SANDBOX_EXIT_IDLE);
        uint64_t woke = phase_now_ns();
        sandbox_request req = hdr->request;   /* one consistent copy */
        sandbox_response *resp = &hdr->response;
        memset(resp, 0, sizeof *resp);
        resp->seq = req.seq;
        resp->exit_code = -1;
        if (req.magic != SANDBOX_MAGIC || req.version != SANDBOX_VERSION) {
            respond_message(resp, PHASE_CRASHED, "sandbox: request of an unknown format");
            say_done(resp);
            _exit(SANDBOX_EXIT_IDLE);
        }
        const phase_module *module = NULL;
        int jit = req.engine == PHASE_ENGINE_WASMTIME;
        if (jit && req.module_inline)
            module = cache_find(req.module_hash);   /* compiled here already: the bytes need no validation */
        if (!req.module_inline) {
            module = cache_find(req.module_hash);
            if (!module) {
                resp->module_missing = 1;   /* the parent sends the bytes; wait again, still unconfined */
                say_done(resp);
                continue;
            }
        }
        if (!in_bounds(req.module_off, req.module_len, shm_bytes) || !in_bounds(req.input_off, req.input_len, shm_bytes)
            || !in_bounds(req.strings_off, req.strings_len, shm_bytes) || !in_bounds(req.out_off, req.out_cap, shm_bytes)) {
            respond_message(resp, PHASE_CRASHED, "sandbox: request out of bounds");
            say_done(resp);
            _exit(SANDBOX_EXIT_IDLE);
        }
        if (req.npreopens != go.n) {
            respond_message(resp, PHASE_CRASHED, landlock_abi ? "sandbox: the job's directories did not arrive"
                            : "sandbox: this kernel has no Landlock, so directories cannot be given to sandboxed jobs");
            say_done(resp);
            _exit(SANDBOX_EXIT_IDLE);
        }
        /* Nothing of the file system outside the job's directories, whatever path anything names from here on
         * (before the rlimits: the ruleset needs a descriptor of its own for a moment). */
        if (landlock_abi && phase_sandbox_landlock(landlock_abi, go.fds, req.preopen_readonly, go.n) != 0)
            _exit(SANDBOX_EXIT_SETUP);
        if (confine(&req, base_vm, module ? module->len : (size_t) req.module_len) != 0)
            _exit(SANDBOX_EXIT_SETUP);
        /* forked with the compiling engine's two calls (its filter went on before the job was known): a wasm3 job
         * gives them back */
        if (worker_jit && !jit && phase_sandbox_seccomp_narrow() != 0)
            _exit(SANDBOX_EXIT_SETUP);
        resp->t_ready_ns = ready;
        resp->t_woke_ns = woke;
        resp->t_confined_ns = phase_now_ns();
        /* From here on the worker is confined: anything below may be hostile. */
        test_action(req.test_action);
        if (req.test_action == SANDBOX_TEST_FORGE) {
            hdr->request.out_off = 1ull << 40;
            hdr->request.out_cap = ~0ull;
            resp->status = PHASE_OK;
            resp->exit_code = 0;
            resp->out_len = 1ull << 30;
            say_done(resp);
            resp->seq = req.seq + 1;
            resp->out_len = 0;
            snprintf(resp->message, sizeof resp->message, "forged by the previous worker");
            __atomic_store_n(&resp->done_seq, req.seq + 1, __ATOMIC_RELEASE);
            _exit(0);
        }
        if (req.test_action == SANDBOX_TEST_SNOOP) {
            uint64_t stale = 0;
            for (uint64_t off = SANDBOX_HEADER_BYTES; off < shm_bytes; off++) {
                int own = (off >= req.module_off && off - req.module_off < req.module_len)
                          || (off >= req.input_off && off - req.input_off < req.input_len)
                          || (off >= req.strings_off && off - req.strings_off < req.strings_len);
                stale += !own && shm[off] != 0;
            }
            char text[96];
            snprintf(text, sizeof text, "snooped: %llu bytes not of this job", (unsigned long long) stale);
            respond_message(resp, PHASE_CRASHED, text);
            say_done(resp);
            _exit(0);
        }
        if (req.test_action == SANDBOX_TEST_STREAM_FORGE) {
            static const uint8_t forged[] = "forged by the worker\n";
            for (uint64_t sent = 0; req.stream_output && sent <= 2 * req.limits.output_bytes; sent += sizeof forged - 1)
                if (send_chunks(NULL, 1, forged, sizeof forged - 1) != 0)
                    break;
            resp->status = PHASE_OK;
            resp->exit_code = 0;
            say_done(resp);
            _exit(0);
        }
        if (req.test_action == SANDBOX_TEST_OPEN_OUTSIDE) {
            /* openat2 without RESOLVE_BENEATH, as code that escaped wasm3 could call it: an absolute path, the
             * parent of the job's first directory, and a file inside it (which must still work). */
            struct open_how how;
            memset(&how, 0, sizeof how);
            how.flags = O_RDONLY | O_CLOEXEC;
            int e[3];
            const char *paths[3] = {"/etc/passwd", "..", "inside.txt"};
            for (int i = 0; i < 3; i++) {
                int fd = (int) syscall(SYS_openat2, i == 0 || !go.n ? AT_FDCWD : go.fds[0], paths[i], &how, sizeof how);
                e[i] = fd >= 0 ? 0 : errno;
            }
            char text[96];
            snprintf(text, sizeof text, "absolute %d parent %d inside %d", e[0], e[1], e[2]);
            respond_message(resp, PHASE_CRASHED, text);
            say_done(resp);
            _exit(0);
        }
        if (req.test_action == SANDBOX_TEST_WRITE_PAST && go.n) {
            /* Without the WASI layer's count: one file in the first directory, 64 KiB at a time, past disk_bytes. */
            struct open_how how;
            memset(&how, 0, sizeof how);
            how.flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
            how.mode = 0600;
            how.resolve = RESOLVE_BENEATH;
            int fd = (int) syscall(SYS_openat2, go.fds[0], "past.bin", &how, sizeof how);
            static uint8_t block[65536];
            for (uint64_t i = 0; fd >= 0 && i <= req.quota.max_bytes / sizeof block; i++)
                if (write(fd, block, sizeof block) < 0)
                    break;
            respond_message(resp, PHASE_CRASHED, fd < 0 ? "cannot create past.bin" : "wrote past disk_bytes");
            say_done(resp);
            _exit(0);
        }
        if (req.test_action == SANDBOX_TEST_ALLOCATE) {
            /* The blocks are chained and the chain counted, so the allocations are observable: an optimiser
             * (clang does) may otherwise remove a malloc whose memory is never read, and loop forever. */
            void **chain = NULL;
            for (;;) {
                void **p = malloc(1 << 20);
                if (!p)
                    break;
                memset(p, 1, 1 << 20);
                *p = chain;
                chain = p;
            }
            uint64_t got = 0;
            for (void **p = chain; p; p = *p)
                got += 1 << 20;
            resp->oom = 1;
            char text[128];
            snprintf(text, sizeof text, "test allocation stopped after %llu MiB", (unsigned long long) (got >> 20));
            respond_message(resp, PHASE_CRASHED, text);
            say_done(resp);
            _exit(0);
        }
        char err[PHASE_MESSAGE_BYTES];
        phase_module *own = NULL;
        if (!module) {
            err[0] = 0;
            own = phase_module_new(shm + req.module_off, req.module_len, err, sizeof err);
            if (!own) {
                /* The validator may fail by running out of address space too. */
                respond_message(resp, PHASE_INVALID_MODULE, err[0] ? err : "invalid module");
                say_done(resp);
                _exit(0);
            }
            module = own;
        }
        if (jit) {
            int ci = own ? -1 : cache_index(module->hash);
            unsigned index = (req.limits.fuel != 0) | ((req.deterministic != 0) << 1);
            if (!wasmtime_path || jit_failure[0]) {
                respond_message(resp, PHASE_REJECTED,
                                jit_failure[0] ? jit_failure : "this sandbox was started without the compiling engine");
                say_done(resp);
                _exit(0);
            }
            if (ci >= 0 && ((cache_failed[ci] >> index) & 1)) {
                respond_message(resp, PHASE_INVALID_MODULE, cache_failure[ci]);
                say_done(resp);
                _exit(0);
            }
            if (!wasmtime_on || !phase_wasmtime_is_compiled((phase_module *) module, &req.limits, req.deterministic)) {
                /* Valid, but no code: the parent has the server compile it and sends the job to a later worker. */
                resp->uncompiled = 1;
                say_done(resp);
                _exit(0);
            }
        }
        const char *entry, **argv, **envp, **guests;
        if (split_strings((const char *) shm + req.strings_off, req.strings_len, req.argc, req.envc, req.npreopens,
                          &entry, &argv, &envp, &guests) != 0) {
            respond_message(resp, PHASE_CRASHED, "sandbox: malformed argument strings");
            say_done(resp);
            _exit(0);
        }
        phase_job_spec spec;
        memset(&spec, 0, sizeof spec);
        spec.module = module;
        spec.entry = entry;
        spec.argv = argv;
        spec.argc = req.argc;
        spec.envp = envp;
        spec.envc = req.envc;
        spec.input = shm + req.input_off;
        spec.input_len = req.input_len;
        spec.limits = req.limits;
        spec.deterministic = req.deterministic;
        memcpy(spec.seed, req.seed, sizeof spec.seed);
        phase_preopen preopens[PHASE_MAX_PREOPENS];
        for (uint32_t i = 0; i < req.npreopens; i++) {
            preopens[i].fd = go.fds[i];
            preopens[i].guest = guests[i];
            preopens[i].readonly = (req.preopen_readonly >> i) & 1;
        }
        spec.preopens = preopens;
        spec.npreopens = req.npreopens;
        spec.quota = req.quota;
        spec.unhashed = 1;   /* the parent hashes input and output itself (never trusting a worker's) */
        if (req.stream_output)
            spec.output_sink = send_chunks;
        if (jit) {
            spec.engine = PHASE_ENGINE_WASMTIME;
            /* The epoch ticks from SIGALRM (phase_wasmtime_tick_on): first at the deadline, then every tick until the job's
             * deadline callback sees it has passed. No tick before: a job that ends in time never sees a signal. */
            uint64_t t = req.limits.timeout_ms;
            struct itimerval it = {
                .it_interval = {.tv_sec = 0, .tv_usec = PHASE_EPOCH_TICK_MS * 1000},
                .it_value = {.tv_sec = (time_t) (t / 1000), .tv_usec = (suseconds_t) (t % 1000) * 1000},
            };
            if (t && setitimer(ITIMER_REAL, &it, NULL) != 0)
                _exit(SANDBOX_EXIT_SETUP);
        }
        phase_result res;
        int rc = phase_job_run(&spec, &res);
        resp->t_ran_ns = phase_now_ns();
        resp->status = (int32_t) res.status;
        resp->exit_code = res.exit_code;
        resp->fs_unavailable = (uint32_t) res.fs_unavailable;
        resp->fs_limit = (uint32_t) res.fs_limit;
        memcpy(resp->message, res.message, sizeof resp->message);
        resp->message[sizeof resp->message - 1] = 0;
        if (rc != 0 && res.status == PHASE_CRASHED)
            resp->oom = 1;   /* phase_job_run fails only when the host runs out of memory */
        uint64_t out_len = res.out_len, err_len = res.err_len;
        if (out_len > req.out_cap)
            out_len = req.out_cap;
        if (err_len > req.out_cap - out_len)
            err_len = req.out_cap - out_len;
        if (out_len)
            memcpy(shm + req.out_off, res.out, out_len);
        if (err_len)
            memcpy(shm + req.out_off + out_len, res.err, err_len);
        resp->out_len = out_len;
        resp->err_len = err_len;
        resp->fuel_used = res.fuel_used;
        resp->wall_us = res.wall_us;
        resp->memory_peak_bytes = res.memory_peak_bytes;
        say_done(resp);
        /* No clean-up: the process ends here, and its memory with it. */
        _exit(0);
    }
}

/* In the child right after fork: drop everything that is not this buffer's, then serve one job. */
static void worker_main(unsigned index, int chan)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != server_pid)
        _exit(SANDBOX_EXIT_SETUP);
    if (wasmtime_on)
        phase_wasmtime_set_compiling(0);
    /* Other buffers' shared memory holds other jobs: unmap it. */
    for (unsigned j = 0; j < nbuffers; j++)
        if (j != index)
            munmap(buffers[j].shm, buffers[j].shm_bytes);
    /* 0-2 become /dev/null first (devnull itself may sit on fd 3), then the channel moves to fd 3. */
    if (dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(devnull, 2) < 0 || dup2(chan, WORKER_FD) < 0)
        _exit(SANDBOX_EXIT_SETUP);
    /* Through syscall(2): the close_range() wrapper needs glibc 2.34, the wheels' floor is 2.28. */
    if (syscall(SYS_close_range, WORKER_FD + 1, ~0u, 0) != 0)
        _exit(SANDBOX_EXIT_SETUP);
    /* What this worker inherits: the server's address space less the other buffers' shared memory. */
    uint64_t base_vm = server_vm_bytes;
    for (unsigned j = 0; j < nbuffers; j++)
        if (j != index)
            base_vm -= buffers[j].shm_bytes;
    /* Code pages are not populated ahead (MADV_POPULATE_READ over every file mapping): that cost ~300 us of
     * CPU per worker plus as much again to unmap them at exit, for ~30 us less of page faults in the job; on
     * 2 CPUs it halved the throughput. The job faults in the few code pages it runs (fault-around maps 16 at a
     * time). */
    if (confine_early() != 0)
        _exit(errno == ENOSYS ? SANDBOX_EXIT_NO_SECCOMP : SANDBOX_EXIT_SETUP);
    worker_run((sandbox_shm_header *) buffers[index].shm, buffers[index].shm_bytes, base_vm);
    _exit(SANDBOX_EXIT_IDLE);
}

/* ---- compile helpers ------------------------------------------------------------------------ */

/* Read or write all of len bytes on fd (EINTR and short transfers retried; end of file fails). 0 or -1. */
static int transfer_full(int fd, void *buf, size_t len, int writing)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t) n;
    }
    return 0;
}

/* In the child right after fork: compile cached module i for configuration index and write the code (or why not)
 * into the memfd, then exit. Forked from the server, which runs no stranger's code, and single-use: whatever one
 * module's bytes do to Cranelift, no other module's code passes through this process. Confined like a worker
 * (no capabilities, no_new_privs, rlimits, its own seccomp filter: it may make memory executable, since wasmtime
 * publishes the code it compiled, but opens, sends and signals nothing), with nothing of the server's but the
 * module: every buffer's shared memory is unmapped and every descriptor closed. */
static void helper_main(unsigned i, unsigned index, int memfd)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != server_pid)
        _exit(SANDBOX_EXIT_SETUP);
    for (unsigned j = 0; j < nbuffers; j++)
        munmap(buffers[j].shm, buffers[j].shm_bytes);
    phase_arena_keep_only(cache[i]->arena);
    if (dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(devnull, 2) < 0 || dup2(memfd, HELPER_FD) < 0
        || syscall(SYS_close_range, HELPER_FD + 1, ~0u, 0) != 0)
        _exit(SANDBOX_EXIT_SETUP);
    /* Jobs first: a compile is background work (a worker's job takes the CPU from it, not the other way). */
    if (setpriority(PRIO_PROCESS, 0, HELPER_NICE) != 0)
        _exit(SANDBOX_EXIT_SETUP);
    struct rlimit cpu = {.rlim_cur = HELPER_CPU_SECONDS, .rlim_max = HELPER_CPU_SECONDS + 1};
    uint64_t vm = server_vm_bytes;
    for (unsigned j = 0; j < nbuffers; j++)
        vm -= buffers[j].shm_bytes;
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (set_limit(RLIMIT_AS, vm + HELPER_AS_BYTES(cache[i]->len)) != 0 || setrlimit(RLIMIT_CPU, &cpu) != 0
        || set_limit(RLIMIT_CORE, 0) != 0 || set_limit(RLIMIT_NOFILE, HELPER_FD + 1) != 0
        || set_limit(RLIMIT_FSIZE, sizeof(sandbox_code_header) + SANDBOX_MAX_CODE_BYTES) != 0
        || syscall(SYS_capset, &head, data) != 0 || phase_sandbox_seccomp_install_compiler(getpid()) != 0)
        _exit(SANDBOX_EXIT_SETUP);
    phase_limits lim;
    int det;
    limits_for_engine_index(index, &lim, &det);
    char err[160] = "";
    uint8_t *code = NULL;
    size_t len = 0;
    uint64_t t0 = phase_now_ns();
    int rc = phase_wasmtime_serialize(cache[i], &lim, det, &code, &len, err, sizeof err);
    sandbox_code_header h = {.magic = SANDBOX_CODE_MAGIC, .ok = rc == 0, .compile_us = (phase_now_ns() - t0) / 1000};
    h.len = rc == 0 ? len : strlen(err);
    if (transfer_full(HELPER_FD, &h, sizeof h, 1) != 0 || transfer_full(HELPER_FD, rc == 0 ? (void *) code : err, h.len, 1) != 0)
        _exit(SANDBOX_EXIT_SETUP);
    _exit(0);
}

/* Give queued compiles to free helpers (the oldest cached module first). */
static void start_helpers(void)
{
    for (unsigned h = 0; h < HELPERS_MAX; h++) {
        if (helpers[h].pid)
            continue;
        unsigned i = 0, index = 0;
        while (i < cache_count && !cache_queued[i])
            i++;
        if (i == cache_count)
            return;
        while (!((cache_queued[i] >> index) & 1))
            index++;
        int memfd = memfd_create("phase-compiled", MFD_CLOEXEC);
        if (memfd < 0) {
            snprintf(cache_failure[i], sizeof cache_failure[i], "cannot make a compile helper: %s", strerror(errno));
            cache_queued[i] &= (uint8_t) ~(1u << index);
            cache_failed[i] |= (uint8_t) (1u << index);
            send_event(cache[i]->hash, index + 1, SANDBOX_COMPILE_FAILED, -1, 0, cache_failure[i]);
            continue;
        }
        pid_t pid = fork();
        if (pid < 0)
            fatal("fork");
        if (pid == 0)
            helper_main(i, index, memfd);
        cache_queued[i] &= (uint8_t) ~(1u << index);
        cache_compiling[i] |= (uint8_t) (1u << index);
        helpers[h] = (srv_helper){.pid = pid, .memfd = memfd, .compile = index + 1};
        memcpy(helpers[h].hash, cache[i]->hash, PHASE_SHA256_BYTES);
    }
}

/* A helper was reaped: load what it made (nothing in it is believed before its lengths are checked; wasmtime
 * checks the code's header), or record why not, and tell the parent. */
static void helper_done(srv_helper *h, int status)
{
    char why[160] = "";
    unsigned index = h->compile - 1;
    int ci = cache_index(h->hash);
    if (ci >= 0)
        cache_compiling[ci] &= (uint8_t) ~(1u << index);
    sandbox_code_header hdr;
    memset(&hdr, 0, sizeof hdr);
    struct stat st;
    int sane = WIFEXITED(status) && WEXITSTATUS(status) == 0 && fstat(h->memfd, &st) == 0
               && pread(h->memfd, &hdr, sizeof hdr, 0) == (ssize_t) sizeof hdr && hdr.magic == SANDBOX_CODE_MAGIC
               && hdr.len <= SANDBOX_MAX_CODE_BYTES && (uint64_t) st.st_size == sizeof hdr + hdr.len;
    uint8_t *map = NULL;
    if (!sane) {
        if (WIFSIGNALED(status))
            snprintf(why, sizeof why, "the compile helper was killed by %s (signal %d)%s", strsignal(WTERMSIG(status)),
                     WTERMSIG(status), WTERMSIG(status) == SIGXCPU ? ": it ran out of CPU time" : "");
        else
            snprintf(why, sizeof why, "the compile helper failed (exit code %d)", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    } else if (!hdr.ok) {
        size_t n = hdr.len < sizeof why - 1 ? (size_t) hdr.len : sizeof why - 1;
        ssize_t got = pread(h->memfd, why, n, sizeof hdr);
        why[got > 0 ? got : 0] = 0;
        if (!why[0])
            snprintf(why, sizeof why, "the compile helper could not compile the module");
    } else if (ci >= 0) {
        map = mmap(NULL, sizeof hdr + hdr.len, PROT_READ, MAP_PRIVATE, h->memfd, 0);
        if (map == MAP_FAILED) {
            map = NULL;
            snprintf(why, sizeof why, "cannot map the compiled code: %s", strerror(errno));
        } else if (cache_load_code((unsigned) ci, index, map + sizeof hdr, hdr.len, why, sizeof why) != 0) {
            char what[120];
            snprintf(what, sizeof what, "%s", why);
            snprintf(why, sizeof why, "wasmtime refused the compile helper's code: %.110s", what);
        }
        if (map)
            munmap(map, sizeof hdr + hdr.len);
        note_vm_size();
    }
    if (why[0] && ci >= 0) {
        cache_failed[ci] |= (uint8_t) (1u << index);
        snprintf(cache_failure[ci], sizeof cache_failure[ci], "%s", why);
    }
    /* A module evicted meanwhile: its code still goes to the parent's disk cache (a later ADD brings it back). */
    send_event(h->hash, h->compile, why[0] ? SANDBOX_COMPILE_FAILED : SANDBOX_COMPILE_OK, why[0] ? -1 : h->memfd,
               hdr.compile_us, why);
    close(h->memfd);
    h->pid = 0;
    start_helpers();
}

/* ---- the server loop ------------------------------------------------------------------------ */

static int send_msg(int sock, const sandbox_msg *msg, int fd)
{
    return sandbox_send_fds(sock, msg, sizeof *msg, &fd, fd >= 0 ? 1 : 0) == (ssize_t) sizeof *msg ? 0 : -1;
}

#ifdef PHASE_COVERAGE
void __gcov_dump(void);
#endif

static void shutdown_all(int code)
{
    for (unsigned h = 0; h < HELPERS_MAX; h++)
        if (helpers[h].pid > 0) {
            kill(helpers[h].pid, SIGKILL);
            waitpid(helpers[h].pid, NULL, 0);
        }
    for (unsigned i = 0; i < nbuffers; i++)
        if (buffers[i].pid > 0)
            kill(buffers[i].pid, SIGKILL);
    for (unsigned i = 0; i < nbuffers; i++)
        if (buffers[i].pid > 0)
            waitpid(buffers[i].pid, NULL, 0);
#ifdef PHASE_COVERAGE
    __gcov_dump();   /* coverage builds only: _exit skips gcov's own writing (confined workers never write) */
#endif
    _exit(code);
}

static void spawn(unsigned index)
{
    srv_buffer *buf = &buffers[index];
    srv_slot *slot = &slots[buf->slot];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        fatal("socketpair");
    pid_t pid = fork();
    if (pid < 0)
        fatal("fork");
    if (pid == 0) {
        close(sv[0]);
        worker_main(index, sv[1]);
    }
    close(sv[1]);
    buf->pid = pid;
    buf->gen = ++slot->gen;
    sandbox_msg msg = {.type = SANDBOX_MSG_READY, .gen = buf->gen, .pid = pid, .cache_seq = cache_seq,
                       .buffer = buf->index, .compile_seq = compile_seq};
    int rc = send_msg(slot->sock, &msg, sv[0]);
    close(sv[0]);
    if (rc != 0)
        shutdown_all(0);   /* the parent is gone */
}

static void reap(void)
{
    for (;;) {
        int status;
        struct rusage ru;
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid <= 0)
            return;
        for (unsigned h = 0; h < HELPERS_MAX; h++)
            if (helpers[h].pid == pid)
                helper_done(&helpers[h], status);
        for (unsigned i = 0; i < nbuffers; i++) {
            srv_buffer *buf = &buffers[i];
            if (buf->pid != pid)
                continue;
            srv_slot *slot = &slots[buf->slot];
            buf->pid = 0;
            sandbox_msg msg = {
                .type = SANDBOX_MSG_EXITED, .gen = buf->gen, .pid = pid, .wait_status = status, .buffer = buf->index,
                .maxrss_kb = ru.ru_maxrss,
                .cpu_us = (int64_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000
                          + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec,
            };
            if (send_msg(slot->sock, &msg, -1) != 0)
                shutdown_all(0);
            /* A worker that could not even set itself up would fail again at once: do not spin. */
            if (WIFEXITED(status) && (WEXITSTATUS(status) == SANDBOX_EXIT_SETUP
                                      || WEXITSTATUS(status) == SANDBOX_EXIT_NO_SECCOMP))
                buf->respawn_at_ns = phase_now_ns() + 100000000ull;
            else
                spawn(i);
        }
    }
}

static int read_full(int fd, void *buf, size_t len)
{
    return transfer_full(fd, buf, len, 0);
}

static void handle_main(void)
{
    sandbox_msg msg;
    if (read_full(main_sock, &msg, sizeof msg) != 0)
        shutdown_all(0);   /* EOF: the parent closed the sandbox (or died) */
    if (msg.type != SANDBOX_MSG_ADD || msg.cache_seq > (256ull << 20) || msg.code_len > SANDBOX_MAX_CODE_BYTES
        || (msg.code_len && !msg.compile)) {
        fprintf(stderr, "phase-sandboxd: bad message on the main socket\n");
        shutdown_all(2);
    }
    size_t len = (size_t) msg.cache_seq, code_len = (size_t) msg.code_len;
    /* The module is built in an arena (phase_arena.h): its bytes, parsed and compiled code and prepared instance end
     * up in a sealed memfd mapped copy-on-write, which fork() does not copy page by page. Address space only: wasm3's
     * code is ~6x the module's bytes; what does not fit comes from the heap. Its bytes are read straight into it (a
     * 3.3 MB module read into the heap and then copied cost ~5 ms more). */
    phase_arena *arena = phase_arena_open(ARENA_RESERVE(len));
    uint8_t *bytes = phase_arena_calloc(len ? len : 1);
    uint8_t *code = code_len ? malloc(code_len) : NULL;
    if (!bytes || (code_len && !code))
        shutdown_all(2);
    if (read_full(main_sock, bytes, len) != 0 || (code_len && read_full(main_sock, code, code_len) != 0))
        shutdown_all(0);
    cache_add(arena, bytes, len, msg.compile, code, code_len);
    free(code);
    cache_seq++;
    note_vm_size();
}

static void handle_slot(unsigned index)
{
    srv_slot *slot = &slots[index];
    sandbox_msg msg;
    ssize_t n = recv(slot->sock, &msg, sizeof msg, 0);
    if (n < 0 && errno == EINTR)
        return;
    if (n != (ssize_t) sizeof msg)
        shutdown_all(0);
    if (msg.type != SANDBOX_MSG_KILL)
        return;
    for (unsigned i = 0; i < nbuffers; i++)
        if (buffers[i].slot == index && buffers[i].gen == msg.gen && buffers[i].pid > 0)
            kill(buffers[i].pid, SIGKILL);   /* reap() reports it */
}

/* A job the server runs itself once, before forking: a trusted constant module. It makes the core
 * cache what it learns once per thread (the native stack bounds, via /proc/self/maps) so that no
 * worker needs /proc after its seccomp filter is on. */
static const uint8_t warm_up_module[] = {
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,             /* \0asm, version 1 */
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00,                         /* type: () -> () */
    0x03, 0x02, 0x01, 0x00,                                     /* one function */
    0x05, 0x03, 0x01, 0x00, 0x01,                               /* memory 1 */
    0x07, 0x0a, 0x01, 0x06, '_', 's', 't', 'a', 'r', 't', 0x00, 0x00,
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b,                         /* body: end */
};

static void warm_up(void)
{
    char err[256];
    phase_module *m = phase_module_new(warm_up_module, sizeof warm_up_module, err, sizeof err);
    if (!m) {
        fprintf(stderr, "phase-sandboxd: warm-up module rejected: %s\n", err);
        _exit(2);
    }
    phase_job_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.module = m;
    phase_limits_default(&spec.limits);
    phase_result res;
    phase_job_run(&spec, &res);
    phase_result_clear(&res);
    phase_module_free(m);
}

/* The compiling engine's set-up, once, before its first compile: its library loaded, then the tiny module on
 * wasmtime sets up its engine, its signal handlers and this thread's trap state here, so workers inherit them (no
 * sigaltstack or sigaction after their filter is on). 1 when ready; 0 with jit_failure set when it cannot be. */
static int jit_set_up(void)
{
    if (jit_ready || jit_failure[0] || !wasmtime_load_now())
        return jit_ready;
    char err[256];
    phase_module *m = phase_module_new(warm_up_module, sizeof warm_up_module, err, sizeof err);
    phase_job_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.module = m;
    spec.engine = PHASE_ENGINE_WASMTIME;
    phase_limits_default(&spec.limits);
    phase_result res;
    phase_job_run(&spec, &res);
    if (res.status == PHASE_OK)
        jit_ready = 1;
    else
        snprintf(jit_failure, sizeof jit_failure, "the compiling engine cannot run in this sandbox: %.150s",
                 res.message);
    phase_result_clear(&res);
    phase_module_free(m);
    check_single_threaded("the compiling engine");
    return jit_ready;
}


static int parse_fd(const char *s, char **end)
{
    long v = strtol(s, end, 10);
    return (v >= 0 && v < 1 << 20 && *end != s) ? (int) v : -1;
}

int phase_sandbox_server_main(int argc, char **argv)
{
    server_pid = getpid();
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--main") == 0 && i + 1 < argc) {
            main_sock = parse_fd(argv[++i], &end);
        } else if (strcmp(argv[i], "--events") == 0 && i + 1 < argc) {
            events_sock = parse_fd(argv[++i], &end);
        } else if (strcmp(argv[i], "--wasmtime") == 0 && i + 1 < argc) {
            wasmtime_path = argv[++i];
        } else if (strcmp(argv[i], "--seccomp-program") == 0 && i + 1 < argc) {
            /* tests: the policy's BPF program on stdout (struct sock_filter, native byte order), nothing run */
            struct sock_filter prog[PHASE_SECCOMP_MAX_INSNS];
            unsigned len = 0;
            if (phase_sandbox_seccomp_program(argv[++i], prog, &len) != 0) {
                fprintf(stderr, "phase-sandboxd: --seccomp-program %s: %s\n", argv[i], strerror(errno));
                _exit(2);
            }
            _exit(fwrite(prog, sizeof prog[0], len, stdout) == len && fflush(stdout) == 0 ? 0 : 1);
        } else if (strcmp(argv[i], "--slot") == 0 && i + 1 < argc && nslots < MAX_SLOTS) {
            /* --slot SOCK:SHM[,SHM...]: one memfd per buffer of the slot. */
            int sock = parse_fd(argv[++i], &end);
            unsigned depth = 0;
            char sep = *end;
            while (sock >= 0 && sep == (depth ? ',' : ':')) {
                int shm_fd = parse_fd(end + 1, &end);
                struct stat st;
                if (shm_fd < 0 || depth == SANDBOX_MAX_DEPTH || fstat(shm_fd, &st) != 0
                    || st.st_size < SANDBOX_MIN_SHM_BYTES)
                    break;
                srv_buffer *buf = &buffers[nbuffers++];
                buf->slot = nslots;
                buf->index = depth++;
                buf->shm_bytes = (size_t) st.st_size;
                buf->shm = mmap(NULL, buf->shm_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, shm_fd, 0);
                if (buf->shm == MAP_FAILED)
                    fatal("mmap");
                close(shm_fd);
                sep = *end;
            }
            if (sock < 0 || depth == 0 || sep != 0) {
                fprintf(stderr, "phase-sandboxd: bad --slot %s\n", argv[i]);
                _exit(2);
            }
            slots[nslots++].sock = sock;
        } else {
            fprintf(stderr, "usage: phase-sandboxd --main FD --slot SOCKFD:SHMFD[,SHMFD...] [--slot ...] [--events FD] [--wasmtime LIBRARY]\n");
            _exit(2);
        }
    }
    landlock_abi = phase_sandbox_landlock_abi();
    if (main_sock < 0 || nslots == 0) {
        fprintf(stderr, "usage: phase-sandboxd --main FD --slot SOCKFD:SHMFD[,SHMFD...] [--slot ...] [--events FD] [--wasmtime LIBRARY]\n");
        _exit(2);
    }
    if (phase_crypto_init() != 0) {
        fprintf(stderr, "phase-sandboxd: libsodium failed to initialise\n");
        _exit(2);
    }
    /* A fixed mmap threshold: large blocks (the wasm value stack, output buffers) come from mmap as untouched
     * zero pages, so calloc need not clear them and a worker faults in only what its job uses. (glibc's
     * dynamic threshold would move them onto the heap after the warm-up job freed one.) */
    mallopt(M_MMAP_THRESHOLD, 64 << 10);
    signal(SIGPIPE, SIG_IGN);
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0)
        fatal("/dev/null");
    warm_up();
    note_vm_size();

    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0)
        fatal("sigprocmask");
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        fatal("signalfd");
    for (unsigned i = 0; i < nbuffers; i++)
        spawn(i);

    struct pollfd pfds[MAX_SLOTS + 2];
    for (;;) {
        pfds[0] = (struct pollfd){.fd = sfd, .events = POLLIN};
        pfds[1] = (struct pollfd){.fd = main_sock, .events = POLLIN};
        for (unsigned i = 0; i < nslots; i++)
            pfds[2 + i] = (struct pollfd){.fd = slots[i].sock, .events = POLLIN};
        int timeout = -1;
        uint64_t now = phase_now_ns();
        for (unsigned i = 0; i < nbuffers; i++) {
            if (buffers[i].pid == 0 && buffers[i].respawn_at_ns) {
                if (buffers[i].respawn_at_ns <= now) {
                    buffers[i].respawn_at_ns = 0;
                    spawn(i);
                } else {
                    int ms = (int) ((buffers[i].respawn_at_ns - now) / 1000000) + 1;
                    if (timeout < 0 || ms < timeout)
                        timeout = ms;
                }
            }
        }
        int n = poll(pfds, 2 + nslots, timeout);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fatal("poll");
        /* Reap first, so an EXITED message always precedes the next READY on a slot. */
        if (pfds[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t) sizeof si)
                ;
            reap();
        }
        for (unsigned i = 0; i < nslots; i++)
            if (pfds[2 + i].revents)
                handle_slot(i);
        if (pfds[1].revents)
            handle_main();
    }
}
