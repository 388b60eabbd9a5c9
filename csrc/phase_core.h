/* Phase's job core: run one WASI preview1 job in wasm3 under hard limits.
 *
 * The API is small and C-only so that the Python binding, the sandbox workers
 * and cbench all drive exactly the same code:
 *
 *   phase_module_new()   validate bytes once, keep them with their hash and facts;
 *   phase_job_run()      parse, load, link our WASI layer, run the entry, hash the outputs;
 *   phase_result_clear() free what a result owns.
 *
 * Nothing here touches Python, and phase_job_run() needs no lock: every job owns
 * its wasm3 environment and runtime.
 */
#ifndef PHASE_CORE_H
#define PHASE_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "phase_crypto.h"
#include "wasm_validate.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PHASE_RUNTIME_NAME "wasm3"
#define PHASE_RUNTIME_VERSION "0.5.0+phase1"
#define PHASE_MESSAGE_BYTES 256
#define PHASE_WASM_PAGE 65536u

/* How a job ended. The names (phase_status_name) are the receipt's `status` values. */
typedef enum phase_status {
    PHASE_OK = 0,             /* the entry returned, or the module called proc_exit */
    PHASE_TRAP,               /* a wasm trap: unreachable, division by zero, out of bounds, stack overflow, ... */
    PHASE_TIMEOUT,            /* the wall-clock limit passed */
    PHASE_FUEL_EXHAUSTED,     /* the fuel limit was reached */
    PHASE_MEMORY_LIMIT,       /* the module needed more linear memory than the limit allows */
    PHASE_OUTPUT_LIMIT,       /* stdout + stderr exceeded the output limit */
    PHASE_INVALID_MODULE,     /* malformed, invalid, unsupported, or imports what the host lacks */
    PHASE_REJECTED,           /* refused before running (set by nodes, never by the core) */
    PHASE_CRASHED,            /* the process running the job died (set by the sandbox) */
    PHASE_STATUS_COUNT
} phase_status;

const char *phase_status_name(phase_status status);

/* CLOCK_MONOTONIC in nanoseconds: the one clock of the core, the sandbox and cbench. */
uint64_t phase_now_ns(void);

typedef struct phase_limits {
    uint64_t memory_bytes;   /* linear memory cap; initial memory above it is refused, growth past it fails */
    uint64_t fuel;           /* metering ticks (function entries + loop iterations); 0 = unlimited */
    uint64_t timeout_ms;     /* wall clock; 0 = none */
    uint64_t output_bytes;   /* stdout + stderr together */
    uint32_t stack_bytes;    /* wasm value stack */
} phase_limits;

/* The default limits of a job, the one source of them (pyphase.Limits reads these): 64 MiB of memory, no fuel
 * limit, 10 s of wall clock, 1 MiB of output, 512 KiB of stack. phase_job_run() also uses the memory, output
 * and stack defaults when a caller passes zeros for them. */
void phase_limits_default(phase_limits *limits);

/* A validated module. Immutable once made; may be shared by jobs on several threads. */
typedef struct phase_module {
    uint8_t *bytes;
    size_t len;
    uint8_t hash[PHASE_SHA256_BYTES];
    phase_wasm_info info;
    uint64_t wasi_imports;   /* bit i set: the module imports phase_wasi_function_at(i) */
    /* Idle instances kept for the next job of this module (private to phase_job.c). */
    struct phase_instance_pool *pool;
    /* Code compiled by the compiling engine, per engine configuration (private to phase_wasmtime.c). */
    struct phase_jit_cache *jit;
    /* Where the fork server built it (phase_arena.h); NULL elsewhere. Freed with the module. */
    struct phase_arena *arena;
} phase_module;

/* Validate and copy bytes. Returns NULL with a message in err on failure. */
phase_module *phase_module_new(const uint8_t *bytes, size_t len, char *err, size_t errlen);

/* phase_module_new without the copy: the module keeps `bytes` (from phase_arena_calloc, released with the module)
 * and takes `hash` as their sha256, which the caller computed over these very bytes in memory nobody else writes
 * (the fork server reads a module straight into its arena). NULL: `bytes` stay the caller's. */
phase_module *phase_module_new_in_place(uint8_t *bytes, size_t len, const uint8_t hash[PHASE_SHA256_BYTES], char *err,
                                        size_t errlen);

/* What validation found about a module (every field of phase_wasm_info, then the WASI import mask), in this order:
 * what a record that the module passed the validator keeps (pyphase.compiled), so that a later process can make the
 * module without validating the same bytes again. */
#define PHASE_MODULE_FACTS 19
void phase_module_facts(const phase_module *module, uint64_t facts[PHASE_MODULE_FACTS]);

/* A module that this validator (PHASE_VALIDATOR_ID) accepted before: copies the bytes and takes the facts its
 * validation found, without validating again. `hash` is the sha256 those bytes had then: bytes that hash otherwise,
 * or facts out of their range, are refused (NULL, with the reason in err), and the caller validates instead. The
 * caller vouches for the facts (an authenticated record of its own); never give it facts from a stranger. */
phase_module *phase_module_new_validated(const uint8_t *bytes, size_t len, const uint8_t hash[PHASE_SHA256_BYTES],
                                         const uint64_t facts[PHASE_MODULE_FACTS], char *err, size_t errlen);

/* Names the validator's build (the sha256 of its sources, from CMakeLists.txt): a record made by another one is not
 * used. A build outside CMake (the fuzz targets) has none, and pyphase then keeps and uses no record. */
#ifndef PHASE_VALIDATOR_ID
#define PHASE_VALIDATOR_ID ""
#endif
void phase_module_free(phase_module *module);

/* A host directory the job sees at guest path `guest` (fd_prestat_dir_name). The job dups `fd` (an open
 * directory, O_RDONLY|O_DIRECTORY) and never closes the caller's; every path beneath it is resolved with
 * openat2(RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS), so nothing outside is ever reached. */
typedef struct phase_preopen {
    int fd;
    const char *guest;
    int readonly;          /* no rights that create, change or remove anything */
} phase_preopen;

/* The bound on what a job keeps in its writable directories (a remote job's scratch area), enforced as it writes:
 * `max_bytes` counts each regular file's size rounded up to PHASE_FS_QUOTA_BLOCK (holes and fd_allocate count as
 * written) and one block per directory or symlink; `max_files` counts entries of any kind. `used_*` is what the
 * writable directories hold when the job starts, counted the same way. A call that would pass either bound fails
 * with EDQUOT (a write that fits in part is short), the result's fs_limit says which, and a job that would have
 * ended ok ends output_limit. Read-only directories never count; without `enabled` nothing is counted. */
#define PHASE_FS_QUOTA_BLOCK 4096u
typedef struct phase_fs_quota {
    int enabled;
    uint64_t max_bytes, max_files;
    uint64_t used_bytes, used_files;
} phase_fs_quota;
enum { PHASE_FS_LIMIT_NONE = 0, PHASE_FS_LIMIT_BYTES = 1, PHASE_FS_LIMIT_FILES = 2 };

/* Preopens per job at most, and descriptors a job may hold open at once beyond stdio. */
#define PHASE_MAX_PREOPENS 32
#define PHASE_MAX_FDS 1024

/* Streamed output: the core calls a sink with each piece of stdout (stream 1) or stderr (stream 2) as the module
 * writes it, after the output limit is applied, so the pieces add up to exactly the result's out and err. It runs on
 * the job's thread inside the guest's fd_write; nonzero means the reader is gone: that write fails with EPIPE (as on a
 * closed pipe) and its bytes are not kept. */
typedef int (*phase_output_sink)(void *ctx, int stream, const uint8_t *bytes, size_t len);
/* The engines that can run a job: both see the same module (validated by us first), the same WASI layer, the
 * same limits and statuses. wasm3 interprets (fast to start); wasmtime compiles with Cranelift (fast to run) and
 * is present only once phase_wasmtime_load() found its library. */
typedef enum phase_engine {
    PHASE_ENGINE_WASM3 = 0,
    PHASE_ENGINE_WASMTIME = 1,
} phase_engine;

/* Load wasmtime's C API from path (the `wasmtime` wheel's _libwasmtime.so, version PHASE_WASMTIME_VERSION).
 * Idempotent; 0, or -1 with a message. */
int phase_wasmtime_load(const char *path, char *err, size_t errlen);
int phase_wasmtime_available(void);
/* Why the compiling engine is not available (the last load failure). */
const char *phase_wasmtime_error(void);
/* Compile pm now for the engine a job with these limits and mode uses (a fork server or a background thread calls
 * this so jobs find the code ready). compile_us: how long it took (0 if it was compiled already). 0 or -1. */
int phase_wasmtime_compile(phase_module *pm, const phase_limits *limits, int deterministic, uint64_t *compile_us,
                           char *err, size_t errlen);
int phase_wasmtime_is_compiled(phase_module *pm, const phase_limits *limits, int deterministic);
/* The compiled code as bytes (malloc'd) to keep on disk, and back; wasmtime refuses bytes made by another
 * version or configuration. The module itself was validated by phase_module_new() first. 0 or -1. */
int phase_wasmtime_serialize(phase_module *pm, const phase_limits *limits, int deterministic, uint8_t **out,
                             size_t *out_len, char *err, size_t errlen);
int phase_wasmtime_deserialize(phase_module *pm, const phase_limits *limits, int deterministic, const uint8_t *bytes,
                               size_t len, char *err, size_t errlen);
/* Whether jobs start a thread that advances wasmtime's epoch (default on; a sandbox worker ticks from a timer). */
void phase_wasmtime_set_ticker(int enabled);
/* Advance every engine's epoch once (the ticker, or a worker's timer signal). */
void phase_wasmtime_tick(void);
/* Make signal signum advance every engine's epoch (SA_RESTART): a sandbox worker's timer. 0 or -1/errno. */
int phase_wasmtime_tick_on(int signum);
/* Pool each engine's instances in `slots` reusable slots (0: allocate per job, the default). Called before the
 * first job, in process only: a pool reserves its address space up front (a sandbox worker's RLIMIT_AS has no room);
 * a process with an address-space limit never pools. */
void phase_wasmtime_set_pooling(unsigned slots);
/* Whether a job may compile its module (default on). A sandbox worker turns it off: it runs only code its fork
 * server compiled, and a job whose code is missing fails instead of compiling there. */
void phase_wasmtime_set_compiling(int allowed);

typedef struct phase_job_spec {
    const phase_module *module;
    const char *entry;                 /* NULL = "_start" */
    const char *const *argv;           /* argv[0] is the program name by convention */
    uint32_t argc;
    const char *const *envp;           /* "KEY=VALUE" */
    uint32_t envc;
    const uint8_t *input;              /* stdin */
    size_t input_len;
    phase_limits limits;
    int deterministic;                 /* clocks and random derived from seed; fixed file times and inodes */
    uint8_t seed[32];
    const phase_preopen *preopens;     /* fds 3, 4, ... in this order */
    uint32_t npreopens;
    phase_output_sink output_sink;     /* NULL: output is only collected */
    void *output_ctx;
    phase_engine engine;               /* which engine runs it; PHASE_ENGINE_WASM3 (0) by default */
    phase_fs_quota quota;              /* the writable directories' bound (not enabled: none) */
    int unhashed;                      /* leave the result's input and output hashes zero: the caller makes its own
                                          (a sandbox's parent never takes them from a worker) */
} phase_job_spec;

typedef struct phase_result {
    phase_status status;
    int32_t exit_code;                 /* proc_exit code or the entry's i32 result; -1 unless status is ok */
    char message[PHASE_MESSAGE_BYTES];
    uint8_t *out;                      /* stdout bytes (malloc'd, owned) */
    size_t out_len;
    uint8_t *err;                      /* stderr bytes (malloc'd, owned) */
    size_t err_len;
    uint64_t fuel_used;
    uint64_t wall_us;
    uint64_t memory_peak_bytes;
    uint8_t module_hash[PHASE_SHA256_BYTES];
    uint8_t input_hash[PHASE_SHA256_BYTES];
    uint8_t stdout_hash[PHASE_SHA256_BYTES];
    uint8_t stderr_hash[PHASE_SHA256_BYTES];
    int fs_unavailable;                /* the module looked for a preopened directory and there was none */
    uint64_t compile_us;               /* time this job spent compiling (compiling engine; 0: code was ready) */
    int fs_limit;                      /* PHASE_FS_LIMIT_*: the first quota bound a call of the job was refused at */
} phase_result;

/* Instantiate and compile every function now, without running guest code (not even the start function),
 * and keep the instance for this module's next job. A fork server calls this so that every worker it
 * forks inherits compiled code. 0, or -1 with a message. */
int phase_module_prepare(phase_module *module, const phase_limits *limits, char *err, size_t errlen);
/* The most address space a job may map to compile any module of module_len bytes: deeply nested modules compile
 * on a stack of their own (phase_stack.c). Part of the sandbox worker's RLIMIT_AS. */
size_t phase_compile_stack_bound(size_t module_len);

/* Run one job. Always fills result (status says how it ended); returns 0, or -1 if the
 * host itself failed (out of memory), with status PHASE_CRASHED and a message. */
int phase_job_run(const phase_job_spec *spec, phase_result *result);
void phase_result_clear(phase_result *result);

/* Names and wasm3 signatures of the WASI preview1 functions the host provides. */
typedef struct phase_wasi_function {
    const char *name;
    const char *signature;
    int implemented;       /* 0: a stub answering as a host without files or sockets would */
} phase_wasi_function;
uint32_t phase_wasi_count(void);
const phase_wasi_function *phase_wasi_function_at(uint32_t index);   /* NULL past the end */
#define PHASE_WASI_MODULE "wasi_snapshot_preview1"

#ifdef __cplusplus
}
#endif
#endif
