/* Test support for the WebAssembly spec testsuite's execution assertions (tests/conformance/).
 *
 * For conformance runs only, never on a node's job path: it instantiates a module in a wasm3 runtime
 * set up exactly as a job's (our validator first, the patched interpreter with Phase's metering,
 * native-stack and linear-memory hooks, whose runtime userdata is a phase_instance with a phase_job),
 * but keeps the instance alive so that a sequence of invocations can run against it, links imports
 * from the "spectest" module (print functions as no-ops) and from registered instances, and invokes
 * any exported function with raw-bit arguments.
 *
 * Values cross this API as raw bits in a uint64_t: i32/f32 in the low 32 bits. Types are wasm3's
 * signature letters: 'i' i32, 'I' i64, 'f' f32, 'F' f64.
 *
 * Limits: fuel unlimited (but a wall-clock deadline per call, so a runaway loop ends as a trap),
 * linear memory capped at 4 GiB and reserved lazily, a wasm value stack of the size given, and the
 * native-stack guard of the job executor. Single-threaded: use an instance from one thread at a time.
 */
#ifndef PHASE_SPEC_H
#define PHASE_SPEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct phase_spec_instance phase_spec_instance;

/* Outcome of phase_spec_instantiate. */
typedef enum phase_spec_status {
    PHASE_SPEC_OK = 0,
    PHASE_SPEC_INVALID,        /* our validator rejected the module */
    PHASE_SPEC_UNSUPPORTED,    /* valid, but uses what wasm3 0.5.0 cannot run (validator's "unsupported: ") */
    PHASE_SPEC_UNLINKABLE,     /* an import names nothing we provide (or the wrong signature) */
    PHASE_SPEC_TRAP,           /* instantiation trapped: data/elem segment out of bounds, start function trapped */
    PHASE_SPEC_ERROR,          /* wasm3 refused what the validator accepted (parse/load/compile), or out of memory */
} phase_spec_status;

/* Where a module's imports come from besides "spectest": instances registered under a name. */
typedef struct phase_spec_registry {
    const char *const *names;              /* NUL-terminated module names */
    phase_spec_instance *const *instances;
    uint32_t count;
} phase_spec_registry;

/* Validate, parse, load, link and run the start function. On PHASE_SPEC_OK *out is the instance
 * (free with phase_spec_free; free importers before the instances they import from). Otherwise
 * *out is NULL and err holds a message. stack_bytes: wasm value stack (0 = 512 KiB). */
phase_spec_status phase_spec_instantiate(const uint8_t *bytes, size_t len, const phase_spec_registry *registry,
                                         uint32_t stack_bytes, phase_spec_instance **out, char *err, size_t errlen);

void phase_spec_free(phase_spec_instance *inst);

/* Only our validator, as phase_spec_instantiate runs it, with every function import allowed (linking is then the
 * engine's): PHASE_SPEC_OK, PHASE_SPEC_INVALID or PHASE_SPEC_UNSUPPORTED with a message. For the runner's other
 * engine (the compiling engine), which instantiates and links modules itself. */
phase_spec_status phase_spec_validate(const uint8_t *bytes, size_t len, char *err, size_t errlen);

/* Invoke the function exported as name (name_len bytes, may hold any UTF-8). args: nargs raw values.
 * On success returns 0 and writes up to results_cap results (raw bits) and their types (letters) and
 * *nresults. Returns 1 on a trap (err = wasm3's trap message, e.g. "[trap] integer divide by zero"),
 * -1 on any other error (no such export, argument count or type mismatch, compile error; err says). */
int phase_spec_invoke(phase_spec_instance *inst, const char *name, size_t name_len, const uint64_t *args,
                      const char *arg_types, uint32_t nargs, uint64_t *results, char *result_types,
                      uint32_t results_cap, uint32_t *nresults, char *err, size_t errlen);

/* Read the global exported as name: 0 with *bits and *type set, or -1 with a message. */
int phase_spec_get_global(phase_spec_instance *inst, const char *name, size_t name_len, uint64_t *bits, char *type,
                          char *err, size_t errlen);

/* The signature of an export, e.g. "i(iI)" (results then params), or -1 if there is no such function. */
int phase_spec_export_signature(phase_spec_instance *inst, const char *name, size_t name_len, char *sig,
                                size_t siglen);

/* Per-call wall-clock deadline in milliseconds (default 20000); 0 = none. */
void phase_spec_set_call_timeout_ms(phase_spec_instance *inst, uint64_t ms);

#ifdef __cplusplus
}
#endif
#endif
