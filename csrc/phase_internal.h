/* Internal state shared by the job runner, the meter and the WASI layer. */
#ifndef PHASE_INTERNAL_H
#define PHASE_INTERNAL_H

#include <stdatomic.h>

#include "phase_core.h"
#include "wasm3.h"
#include "m3_env.h"
#include "m3_phase_hooks.h"

/* Ticks handed to the interpreter between two visits of the slow path; the slow path also
 * reads the clock, so this bounds how late a timeout is noticed (a few µs of work). */
#define PHASE_FUEL_CHUNK 4096

/* Traps the WASI layer and the meters raise, the same strings on every engine. */
extern const char *const phase_trap_output_limit;
extern const char *const phase_trap_exit;            /* proc_exit: job->exited says it was one */
extern const char *const phase_trap_timeout;
extern const char *const phase_trap_fuel_exhausted;
extern const char *const phase_trap_interrupted;

#define PHASE_KEPT_RUNS 4 /* page runs an instance's reset zeroes in place (phase_job.c) */

/* A loaded, linked wasm3 runtime for one module, kept between jobs of that module so that lazily
 * compiled code is compiled once. Between jobs its memory, globals and start function are reset to
 * the module's initial state (see instance_reset in phase_job.c). runtime->userdata points here. */
typedef struct phase_instance {
    struct phase_instance *next;
    IM3Environment env;
    IM3Runtime runtime;
    IM3Module module;
    struct phase_job *job;          /* the job running now */
    size_t memory_reserved;         /* bytes mapped for header + maximum linear memory */
    int32_t start_function;         /* as parsed; wasm3 sets it to -1 after running it */
    uint32_t num_globals;
    int64_t *global_init;           /* values of the globals right after instantiation */
    IM3Function entry;
    char entry_name[64];
    /* Page runs of linear memory that reset zeroes in place instead of dropping: the pages the module's
     * jobs touch (learned with mincore now and then), so a tiny job does not fault them in again. */
    uint32_t kept[PHASE_KEPT_RUNS][2]; /* [first, end) page index from the first whole page of memory */
    uint32_t kept_runs;
    uint32_t resets;
} phase_instance;

typedef struct phase_job {
    const phase_job_spec *spec;
    phase_result *result;
    IM3Runtime runtime;
    phase_instance *instance;

    size_t input_pos;
    /* out[0] = stdout, out[1] = stderr */
    uint8_t *out[2];
    size_t out_len[2];
    size_t out_alloc[2];
    uint64_t output_cap;

    int exited;
    int32_t exit_code;
    int output_exceeded;
    int grow_refused;
    uint64_t grow_requested_pages;

    /* fuel: ticks not yet handed out, and ticks handed out so far */
    uint64_t fuel_left;
    uint64_t fuel_handed;
    int unlimited_fuel;
    uint64_t start_ns;
    uint64_t deadline_ns;          /* 0 = none */
    atomic_int interrupt;


    /* descriptors 3.. (phase_wasi_fs.c): fds[i] is WASI fd 3 + i */
    struct phase_fs_fd *fds;
    uint32_t fds_len;              /* slots allocated */
    int8_t stdio[3];               /* the stream guest fds 0-2 hold (0 stdin, 1 stdout, 2 stderr), -1: closed */
    uint64_t fs_bytes, fs_files;   /* what the writable directories hold now, as spec->quota counts it */

    void *engine_state;            /* the compiling engine's per-job state (phase_wasmtime.c) */

    /* deterministic mode */
    uint64_t det_random_calls;
    uint64_t det_clock_calls;
} phase_job;

/* Lowest native stack address a wasm frame may use on this thread (computed once per thread). */
uintptr_t phase_native_stack_limit(void);

/* Deep nesting (phase_stack.c). Bodies nesting at most PHASE_LAZY_COMPILE_DEPTH levels compile lazily on the job's
 * stack (at most ~64 KiB of it, inside PHASE_NATIVE_STACK_RESERVE); deeper modules compile whole before the job on
 * a stack of PHASE_COMPILE_STACK_BASE + depth * PHASE_COMPILE_STACK_PER_LEVEL bytes. */
#define PHASE_LAZY_COMPILE_DEPTH 256u
#define PHASE_COMPILE_STACK_PER_LEVEL 320u
#define PHASE_COMPILE_STACK_BASE (1u << 20)
/* Bytes of compile stack for a module of this depth; 0 when it compiles on the caller's stack. */
size_t phase_compile_stack_bytes(uint64_t depth);
/* m3_CompileModule, on a stack sized for depth when the module nests deeper than PHASE_LAZY_COMPILE_DEPTH.
 * Returns NULL with wasm3's result in *result, or a message when no compile stack could be had. */
const char *phase_compile_module(IM3Module module, uint32_t depth, M3Result *result);

/* Size table 0 as the module declares it, before m3_LoadModule. 0, or -1 when out of memory. */
int phase_table_presize(IM3Module module, const phase_wasm_info *info);
uint64_t phase_job_fuel_used(const phase_job *job);


/* Bit for an import if (name, signature) is a WASI function we provide, else -1 with a message. */
int phase_wasi_lookup(const char *module, size_t module_len, const char *name, size_t name_len,
                      const char *signature, char *err, size_t errlen);

#endif
