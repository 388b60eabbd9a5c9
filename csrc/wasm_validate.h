/* WebAssembly module validator that runs before wasm3 sees a module.
 *
 * wasm3 0.5.0 assumes valid input and has no validator; malformed modules reach heap overflows. This validator
 * implements the WebAssembly 1.0 + multi-value binary-format and validation rules (including full operand/control
 * stack typing of every function body) and additionally rejects, with a message starting "unsupported: ", what
 * wasm3 0.5.0 cannot execute (SIMD, threads, memory64, multiple memories/tables, non-function imports, table.*,
 * memory.init/data.drop, ref.*, exceptions, tail calls).
 *
 * It never recurses on input, bounds-checks every read, bounds every allocation by the caps and the input size,
 * and is safe to call concurrently from several threads (no global state).
 */
#ifndef PHASE_WASM_VALIDATE_H
#define PHASE_WASM_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Defaults (phase_wasm_caps_default): module 64 MiB; types 100000; functions (imported + defined) 200000;
 * imports 10000; exports 100000; globals 100000; data segments 100000; element segments 100000; table initial
 * size 2^20; locals per function 50000 (params excluded); params 1000; results 1000; nesting depth 2^18;
 * body 8 MiB; operand stack 2^20 values; br_table targets 2^20; work_per_byte 64. */
typedef struct phase_wasm_caps {        /* caps beyond the spec, defaults via phase_wasm_caps_default() */
    size_t   max_module_bytes;          /* 64 MiB */
    uint32_t max_types, max_functions, max_imports, max_exports, max_globals,
             max_data_segments, max_elem_segments, max_table_size,
             max_locals_per_function, max_params, max_results,
             max_nesting_depth,         /* control-frame depth (function frame included). wasm3 compiles blocks
                                           recursively in C, so a module nesting deeper than a few hundred
                                           levels is compiled on a stack sized from its measured depth
                                           (phase_job.c); this cap bounds that stack (2^18 levels, ~80 MiB of
                                           address space, touched only as deep as the module nests). Real code
                                           nests one level per switch case: thousands, not 2^18. */
             max_body_bytes, max_operand_stack;
    uint32_t max_br_table_targets;      /* labels in one br_table */
    uint32_t work_per_byte;             /* bound on type-checking work: (work_per_byte * module bytes + 1 Mi)
                                           stack-slot operations in total; protects against quadratic blow-ups
                                           (calls with 1000 params, br_table over many multi-value labels) */
} phase_wasm_caps;
void phase_wasm_caps_default(phase_wasm_caps *caps);

typedef struct phase_wasm_info {
    int      has_memory; uint32_t mem_initial_pages; int mem_has_max; uint32_t mem_max_pages;
    uint32_t num_imported_functions, num_defined_functions, num_types, num_exports;
    int      has_start;
    uint32_t start_function;            /* valid if has_start */
    int      has_table; uint32_t table_initial; int table_has_max; uint32_t table_max;
    uint32_t num_globals, num_data_segments, num_elem_segments;
    uint32_t max_nesting_depth;         /* deepest control-frame nesting of any body (function frame included) */
} phase_wasm_info;

/* Called for every imported function: module and name (not NUL-terminated), and its signature in wasm3's
 * notation, e.g. "i(iiii)" (results then params; 'v' for no result, i=i32 I=i64 f=f32 F=f64). Return 0 to
 * accept; nonzero to reject, after writing a message into err (errlen bytes). */
typedef int (*phase_wasm_import_check)(void *ctx, const char *module, size_t module_len,
                                       const char *name, size_t name_len, const char *signature,
                                       char *err, size_t errlen);

/* 0 if valid; otherwise -1 with a precise, human-readable message in err, naming the section/function/offset,
 * e.g. "function 3 at offset 0x1a2: type mismatch: i32.add expects [i32 i32], got [i64 i32]".
 * Features beyond the spec that wasm3 cannot run are rejected with a message containing "unsupported: ".
 * caps may be NULL (defaults); check may be NULL (all function imports accepted); info may be NULL;
 * err may be NULL or errlen 0. */
int phase_wasm_validate(const uint8_t *bytes, size_t len, const phase_wasm_caps *caps,
                        phase_wasm_import_check check, void *ctx, phase_wasm_info *info,
                        char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
