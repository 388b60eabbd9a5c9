/* The compiling engine's entry points (phase_wasmtime.c): load wasmtime's C API at run time, compile a module
 * for the engine a job needs (or load that compiled code back), and run a job whose WASI state is open. */
#ifndef PHASE_WASMTIME_H
#define PHASE_WASMTIME_H

#include "phase_core.h"

/* Native stack wasm frames may use on the compiling engine (its max_wasm_stack; the thread needs more). */
#define PHASE_WASMTIME_STACK (1u << 20)
/* How often the ticker advances the epoch while jobs run: how late a timeout may be noticed. */
#define PHASE_EPOCH_TICK_MS 2
/* Engine configurations (compiled code is per configuration): fuel metering | canonical NaNs << 1 | epoch
 * interruption (a job with a wall-clock limit) << 2; pyphase.compiled.configuration is the Python side. */
#define PHASE_WASMTIME_CONFIGS 8
/* Address space each linear memory reserves on the compiling engine (PROT_NONE until the store limiter lets it
 * grow), and the guard regions before and after it: a sandbox worker's RLIMIT_AS makes room for them. */
#define PHASE_WASMTIME_RESERVATION (4ull << 30)
#define PHASE_WASMTIME_GUARD (32ull << 20)
/* In process, each engine's pooling allocator keeps this many instance slots (memory + table; the address space of
 * PHASE_WASMTIME_POOL_SLOTS linear-memory reservations, reserved once); a job beyond them spills to on-demand
 * allocation. A table slot holds our validator's largest table; an instance's own structures up to 16 MiB. */
#define PHASE_WASMTIME_POOL_SLOTS 64
#define PHASE_WASMTIME_POOL_TABLE_ELEMENTS (1u << 20)
#define PHASE_WASMTIME_POOL_INSTANCE_BYTES (16u << 20)

struct phase_job;
typedef void (*phase_job_classify)(struct phase_job *job, const char *r, int32_t returned);

/* Run job's entry on wasmtime; the job's WASI state (descriptors) is open. Sets status, message, fuel, peak. */
void phase_wasmtime_run(struct phase_job *job, phase_job_classify classify);
void phase_wasmtime_module_free(phase_module *pm);

#endif
