/* The part of wasmtime's C API (wasm.h + wasmtime.h) that phase_wasmtime.c calls, declared here as function
 * pointer types to fill from a dlopen'd _libwasmtime.so (the PyPI `wasmtime` wheel, pinned in pyproject.toml's
 * `jit` extra). Written from the API's documentation for the pinned version (PHASE_WASMTIME_VERSION); nothing of
 * wasmtime's own headers is copied. Only types whose size or layout we depend on are spelled out; the rest stay
 * opaque. A version check (the wheel's metadata, in pyphase.engines) guards the layouts.
 */
#ifndef PHASE_WASMTIME_API_H
#define PHASE_WASMTIME_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PHASE_WASMTIME_VERSION "50.0.1"

typedef struct wasm_config_t wasm_config_t;
typedef struct wasm_engine_t wasm_engine_t;
typedef struct wasm_trap_t wasm_trap_t;
typedef struct wasm_valtype_t wasm_valtype_t;
typedef struct wasm_functype_t wasm_functype_t;
typedef struct wasmtime_error_t wasmtime_error_t;
typedef struct wasmtime_module_t wasmtime_module_t;
typedef struct wasmtime_store_t wasmtime_store_t;
typedef struct wasmtime_context_t wasmtime_context_t;
typedef struct wasmtime_linker_t wasmtime_linker_t;
typedef struct wasmtime_caller_t wasmtime_caller_t;
typedef struct wasmtime_instance_pre_t wasmtime_instance_pre_t;
typedef struct wasmtime_pooling_allocation_config_t wasmtime_pooling_allocation_config_t;

typedef struct pw_byte_vec { size_t size; uint8_t *data; } pw_byte_vec;
typedef struct pw_valtype_vec { size_t size; wasm_valtype_t **data; } pw_valtype_vec;

/* Store-bound handles: an id and private indices (layouts of the pinned version). */
typedef struct pw_func { uint64_t store_id; void *priv; } pw_func;
typedef struct pw_memory { struct { uint64_t store_id; uint32_t priv1; } id; uint32_t priv2; } pw_memory;
typedef struct pw_instance { uint64_t store_id; size_t priv; } pw_instance;
typedef struct pw_extern {
    uint8_t kind;          /* PW_EXTERN_FUNC, PW_EXTERN_MEMORY, ... */
    union {
        pw_func func;
        pw_memory memory;
        uint64_t words[3];
    } of;
} pw_extern;
_Static_assert(sizeof(pw_extern) == 32, "wasmtime_extern_t is 32 bytes on 64-bit targets");
_Static_assert(sizeof(pw_memory) == 24, "wasmtime_memory_t is 24 bytes");

typedef union pw_val_raw {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    uint8_t v128[16];
    void *funcref;
} pw_val_raw;
_Static_assert(sizeof(pw_val_raw) == 16, "wasmtime_val_raw_t is 16 bytes");

enum { PW_I32 = 0, PW_I64 = 1, PW_F32 = 2, PW_F64 = 3 };
enum { PW_EXTERN_FUNC = 0, PW_EXTERN_MEMORY = 3 };
enum { PW_DEADLINE_CONTINUE = 0 };
enum {
    PW_TRAP_STACK_OVERFLOW = 0, PW_TRAP_MEMORY_OUT_OF_BOUNDS = 1, PW_TRAP_HEAP_MISALIGNED = 2,
    PW_TRAP_TABLE_OUT_OF_BOUNDS = 3, PW_TRAP_INDIRECT_CALL_TO_NULL = 4, PW_TRAP_BAD_SIGNATURE = 5,
    PW_TRAP_INTEGER_OVERFLOW = 6, PW_TRAP_INTEGER_DIVISION_BY_ZERO = 7, PW_TRAP_BAD_CONVERSION_TO_INTEGER = 8,
    PW_TRAP_UNREACHABLE = 9, PW_TRAP_INTERRUPT = 10, PW_TRAP_OUT_OF_FUEL = 11,
};

typedef wasm_trap_t *(*pw_unchecked_callback)(void *env, wasmtime_caller_t *caller, pw_val_raw *args_and_results,
                                              size_t num_args_and_results);
typedef wasmtime_error_t *(*pw_deadline_callback)(wasmtime_context_t *context, void *env, uint64_t *delta,
                                                  uint8_t *kind);

/* X(return type, name, parameters): every function phase_wasmtime.c resolves with dlsym. */
#define PW_FUNCTIONS(X) \
    X(wasm_config_t *, wasm_config_new, (void)) \
    X(wasm_engine_t *, wasm_engine_new_with_config, (wasm_config_t *)) \
    X(void, wasm_engine_delete, (wasm_engine_t *)) \
    X(void, wasmtime_config_consume_fuel_set, (wasm_config_t *, bool)) \
    X(void, wasmtime_config_epoch_interruption_set, (wasm_config_t *, bool)) \
    X(void, wasmtime_config_max_wasm_stack_set, (wasm_config_t *, size_t)) \
    X(void, wasmtime_config_parallel_compilation_set, (wasm_config_t *, bool)) \
    X(void, wasmtime_config_cranelift_nan_canonicalization_set, (wasm_config_t *, bool)) \
    X(void, wasmtime_config_memory_reservation_set, (wasm_config_t *, uint64_t)) \
    X(void, wasmtime_config_memory_guard_size_set, (wasm_config_t *, uint64_t)) \
    X(void, wasmtime_config_memory_init_cow_set, (wasm_config_t *, bool)) \
    X(wasmtime_pooling_allocation_config_t *, wasmtime_pooling_allocation_config_new, (void)) \
    X(void, wasmtime_pooling_allocation_config_delete, (wasmtime_pooling_allocation_config_t *)) \
    X(void, wasmtime_pooling_allocation_config_total_core_instances_set, \
      (wasmtime_pooling_allocation_config_t *, uint32_t)) \
    X(void, wasmtime_pooling_allocation_config_total_memories_set, (wasmtime_pooling_allocation_config_t *, uint32_t)) \
    X(void, wasmtime_pooling_allocation_config_total_tables_set, (wasmtime_pooling_allocation_config_t *, uint32_t)) \
    X(void, wasmtime_pooling_allocation_config_total_stacks_set, (wasmtime_pooling_allocation_config_t *, uint32_t)) \
    X(void, wasmtime_pooling_allocation_config_total_gc_heaps_set, (wasmtime_pooling_allocation_config_t *, uint32_t)) \
    X(void, wasmtime_pooling_allocation_config_max_memory_size_set, (wasmtime_pooling_allocation_config_t *, size_t)) \
    X(void, wasmtime_pooling_allocation_config_table_elements_set, (wasmtime_pooling_allocation_config_t *, size_t)) \
    X(void, wasmtime_pooling_allocation_config_max_core_instance_size_set, \
      (wasmtime_pooling_allocation_config_t *, size_t)) \
    X(void, wasmtime_pooling_allocation_config_max_tables_per_module_set, \
      (wasmtime_pooling_allocation_config_t *, uint32_t)) \
    X(void, wasmtime_pooling_allocation_config_max_memories_per_module_set, \
      (wasmtime_pooling_allocation_config_t *, uint32_t)) \
    X(void, wasmtime_pooling_allocation_config_table_keep_resident_set, \
      (wasmtime_pooling_allocation_config_t *, size_t)) \
    X(void, wasmtime_pooling_allocation_strategy_set, (wasm_config_t *, const wasmtime_pooling_allocation_config_t *)) \
    X(void, wasmtime_engine_increment_epoch, (wasm_engine_t *)) \
    X(wasmtime_error_t *, wasmtime_module_new, (wasm_engine_t *, const uint8_t *, size_t, wasmtime_module_t **)) \
    X(void, wasmtime_module_delete, (wasmtime_module_t *)) \
    X(wasmtime_error_t *, wasmtime_module_serialize, (wasmtime_module_t *, pw_byte_vec *)) \
    X(wasmtime_error_t *, wasmtime_module_deserialize, \
      (wasm_engine_t *, const uint8_t *, size_t, wasmtime_module_t **)) \
    X(void, wasm_byte_vec_delete, (pw_byte_vec *)) \
    X(wasmtime_store_t *, wasmtime_store_new, (wasm_engine_t *, void *, void (*)(void *))) \
    X(void, wasmtime_store_delete, (wasmtime_store_t *)) \
    X(wasmtime_context_t *, wasmtime_store_context, (wasmtime_store_t *)) \
    X(void, wasmtime_store_limiter, (wasmtime_store_t *, int64_t, int64_t, int64_t, int64_t, int64_t)) \
    X(void, wasmtime_store_epoch_deadline_callback, \
      (wasmtime_store_t *, pw_deadline_callback, void *, void (*)(void *))) \
    X(void, wasmtime_context_set_epoch_deadline, (wasmtime_context_t *, uint64_t)) \
    X(wasmtime_error_t *, wasmtime_context_set_fuel, (wasmtime_context_t *, uint64_t)) \
    X(wasmtime_error_t *, wasmtime_context_get_fuel, (const wasmtime_context_t *, uint64_t *)) \
    X(wasmtime_linker_t *, wasmtime_linker_new, (wasm_engine_t *)) \
    X(void, wasmtime_linker_delete, (wasmtime_linker_t *)) \
    X(wasmtime_error_t *, wasmtime_linker_define_func_unchecked, \
      (wasmtime_linker_t *, const char *, size_t, const char *, size_t, const wasm_functype_t *, \
       pw_unchecked_callback, void *, void (*)(void *))) \
    X(wasmtime_error_t *, wasmtime_linker_instantiate, \
      (const wasmtime_linker_t *, wasmtime_context_t *, const wasmtime_module_t *, pw_instance *, wasm_trap_t **)) \
    X(wasmtime_error_t *, wasmtime_linker_instantiate_pre, \
      (const wasmtime_linker_t *, const wasmtime_module_t *, wasmtime_instance_pre_t **)) \
    X(void, wasmtime_instance_pre_delete, (wasmtime_instance_pre_t *)) \
    X(wasmtime_error_t *, wasmtime_instance_pre_instantiate, \
      (const wasmtime_instance_pre_t *, wasmtime_context_t *, pw_instance *, wasm_trap_t **)) \
    X(bool, wasmtime_instance_export_get, \
      (wasmtime_context_t *, const pw_instance *, const char *, size_t, pw_extern *)) \
    X(wasm_functype_t *, wasmtime_func_type, (const wasmtime_context_t *, const pw_func *)) \
    X(wasmtime_error_t *, wasmtime_func_call_unchecked, \
      (wasmtime_context_t *, const pw_func *, pw_val_raw *, size_t, wasm_trap_t **)) \
    X(wasmtime_context_t *, wasmtime_caller_context, (wasmtime_caller_t *)) \
    X(bool, wasmtime_caller_export_get, (wasmtime_caller_t *, const char *, size_t, pw_extern *)) \
    X(uint8_t *, wasmtime_memory_data, (const wasmtime_context_t *, const pw_memory *)) \
    X(size_t, wasmtime_memory_data_size, (const wasmtime_context_t *, const pw_memory *)) \
    X(wasm_trap_t *, wasmtime_trap_new, (const char *, size_t)) \
    X(bool, wasmtime_trap_code, (const wasm_trap_t *, uint8_t *)) \
    X(void, wasm_trap_message, (const wasm_trap_t *, pw_byte_vec *)) \
    X(void, wasm_trap_delete, (wasm_trap_t *)) \
    X(void, wasmtime_error_message, (const wasmtime_error_t *, pw_byte_vec *)) \
    X(void, wasmtime_error_delete, (wasmtime_error_t *)) \
    X(wasm_valtype_t *, wasm_valtype_new, (uint8_t)) \
    X(uint8_t, wasm_valtype_kind, (const wasm_valtype_t *)) \
    X(void, wasm_valtype_vec_new, (pw_valtype_vec *, size_t, wasm_valtype_t *const *)) \
    X(void, wasm_valtype_vec_new_empty, (pw_valtype_vec *)) \
    X(wasm_functype_t *, wasm_functype_new, (pw_valtype_vec *, pw_valtype_vec *)) \
    X(const pw_valtype_vec *, wasm_functype_params, (const wasm_functype_t *)) \
    X(const pw_valtype_vec *, wasm_functype_results, (const wasm_functype_t *)) \
    X(void, wasm_functype_delete, (wasm_functype_t *))

#endif
