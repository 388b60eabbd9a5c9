/* The compiling engine: wasmtime (Cranelift) through its C API, loaded at run time from the `wasmtime` wheel's
 * _libwasmtime.so (phase_wasmtime_load). Jobs run under the same limits and the same WASI layer as on wasm3:
 *
 *   memory   the store limiter caps every linear memory at the job's limit;
 *   fuel     wasmtime's fuel (its own unit: roughly one per wasm operator), on engines built to consume it;
 *   timeout  epoch interruption: a ticker thread advances the epoch every PHASE_EPOCH_TICK_MS while jobs run,
 *            and a per-store deadline callback ends the job once its deadline (or an interrupt) has come;
 *   stack    max_wasm_stack (PHASE_WASMTIME_STACK bytes of native stack for wasm frames);
 *   output   our WASI layer, through the same phase_wasi_call view as wasm3's adapter.
 *
 * Up to eight engines exist, one per (fuel metering, NaN canonicalisation, epoch interruption) choice, made on
 * first use (epoch checks only for jobs with a wall-clock limit: they cost up to 1.7x on call-heavy code); each module
 * keeps its compiled code per engine (phase_module.jit), compiled once and shared by every later job, with an
 * InstancePre (imports resolved once) from which each job instantiates.
 * Parallel compilation is off: a fork server compiles before it forks, and threads do not survive fork().
 *
 * In process (phase_wasmtime_set_pooling), engines use wasmtime's pooling allocator: linear memories live in slots
 * reserved once and reused, so a job pays no mmap/mprotect/munmap of its 4 GiB reservation. The pool is a fixed
 * number of slots: a job that finds them all busy, or a module the pool's per-instance bounds refuse, runs on a
 * twin engine with on-demand allocation ("spill"), given the same code. A process with an address-space limit
 * (a sandbox worker's RLIMIT_AS) never pools.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include "phase_internal.h"
#include "phase_wasi.h"
#include "phase_wasmtime.h"
#include "phase_wasmtime_api.h"

#define PW_POINTER(ret, name, params) ret (*name) params;
static struct {
    void *dl;
    PW_FUNCTIONS(PW_POINTER)
    wasmtime_error_t *(*wasmtime_error_new)(const char *);
} api;

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int loaded;                          /* 1 once every symbol resolved */
static char load_error[256] = "the compiling engine is not loaded (pip install 'pyphase[jit]')";
#define PW_ENGINES PHASE_WASMTIME_CONFIGS
static wasm_engine_t *engines[PW_ENGINES];  /* index: metered | canonical_nans << 1 | epoch << 2 */
static wasmtime_linker_t *linkers[PW_ENGINES];
static wasm_engine_t *spill_engines[PW_ENGINES];  /* on-demand twins of pooled engines, made when first needed */
static wasmtime_linker_t *spill_linkers[PW_ENGINES];
static int pooled[PW_ENGINES];                     /* engines[i] allocates from a pool of pool_slots slots */
static unsigned pool_busy[PW_ENGINES];             /* slots in use (atomic) */
static unsigned pool_slots;                        /* 0: no pooling (the default; a fork server never pools) */
static int ticker_started;
static int ticker_enabled = 1;
static int compiling_allowed = 1;
static unsigned active_jobs;
static pthread_cond_t ticker_wake = PTHREAD_COND_INITIALIZER;

/* Compiled code of one module, per engine. */
struct phase_jit_cache {
    pthread_mutex_t lock;
    wasmtime_module_t *compiled[PW_ENGINES];
    wasmtime_instance_pre_t *pre[PW_ENGINES];        /* made on the first job */
    wasmtime_module_t *spill[PW_ENGINES];            /* the same code on the spill engine */
    wasmtime_instance_pre_t *spill_pre[PW_ENGINES];
    uint64_t compile_us[PW_ENGINES];
};

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A wasmtime error's text into buf, and the error freed. */
static void error_text(wasmtime_error_t *e, char *buf, size_t len)
{
    pw_byte_vec msg = {0, NULL};
    api.wasmtime_error_message(e, &msg);
    snprintf(buf, len, "%.*s", (int) (msg.size > 200 ? 200 : msg.size), msg.data ? (const char *) msg.data : "");
    api.wasm_byte_vec_delete(&msg);
    api.wasmtime_error_delete(e);
}

int phase_wasmtime_load(const char *path, char *err, size_t errlen)
{
    pthread_mutex_lock(&state_lock);
    if (loaded) {
        pthread_mutex_unlock(&state_lock);
        return 0;
    }
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        errf(load_error, sizeof load_error, "cannot load %s: %s", path, dlerror());
        goto fail;
    }
#define PW_RESOLVE(ret, name, params)                                                                       \
    if (!(*(void **) &api.name = dlsym(dl, #name))) {                                                        \
        errf(load_error, sizeof load_error, "%s lacks %s: not wasmtime %s's C API", path, #name,             \
             PHASE_WASMTIME_VERSION);                                                                        \
        dlclose(dl);                                                                                         \
        goto fail;                                                                                           \
    }
    PW_FUNCTIONS(PW_RESOLVE)
    PW_RESOLVE(wasmtime_error_t *, wasmtime_error_new, (const char *))
#undef PW_RESOLVE
    api.dl = dl;
    loaded = 1;
    pthread_mutex_unlock(&state_lock);
    return 0;
fail:
    memset(&api, 0, sizeof api);
    errf(err, errlen, "%s", load_error);
    pthread_mutex_unlock(&state_lock);
    return -1;
}

int phase_wasmtime_available(void)
{
    pthread_mutex_lock(&state_lock);
    int ok = loaded;
    pthread_mutex_unlock(&state_lock);
    return ok;
}

const char *phase_wasmtime_error(void)
{
    return load_error;
}

void phase_wasmtime_set_ticker(int enabled)
{
    pthread_mutex_lock(&state_lock);
    ticker_enabled = enabled;
    pthread_mutex_unlock(&state_lock);
}

void phase_wasmtime_set_pooling(unsigned slots)
{
    pthread_mutex_lock(&state_lock);
    pool_slots = slots;
    pthread_mutex_unlock(&state_lock);
}

void phase_wasmtime_set_compiling(int allowed)
{
    pthread_mutex_lock(&state_lock);
    compiling_allowed = allowed;
    pthread_mutex_unlock(&state_lock);
}

void phase_wasmtime_tick(void)
{
    for (int i = 0; i < PW_ENGINES; i++) {
        wasm_engine_t *e = __atomic_load_n(&engines[i], __ATOMIC_ACQUIRE);
        if (e)
            api.wasmtime_engine_increment_epoch(e);
        if ((e = __atomic_load_n(&spill_engines[i], __ATOMIC_ACQUIRE)) != NULL)
            api.wasmtime_engine_increment_epoch(e);
    }
}

static void tick_on_signal(int sig)
{
    (void) sig;
    phase_wasmtime_tick();   /* atomic increments only: async-signal-safe */
}

int phase_wasmtime_tick_on(int signum)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tick_on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(signum, &sa, NULL);
}

/* ---- engines and the WASI linker ------------------------------------------------------------------------ */

static __thread phase_job *current_job;

typedef struct pw_job_state {
    wasmtime_context_t *context;
    pw_memory memory;
    int has_memory;
    int metered;
    uint64_t fuel_start;
    const char *host_trap;      /* the trap our WASI layer or the deadline callback raised */
} pw_job_state;

static uint64_t fuel_consumed(phase_job *job, pw_job_state *st)
{
    uint64_t left = 0;
    if (!st->metered)
        return 0;
    wasmtime_error_t *e = api.wasmtime_context_get_fuel(st->context, &left);
    if (e) {
        api.wasmtime_error_delete(e);
        return 0;
    }
    (void) job;
    return st->fuel_start > left ? st->fuel_start - left : 0;
}

/* Every WASI import calls this with its binding as env: the same functions as wasm3's, in the same view. */
static wasm_trap_t *wasi_callback(void *env, wasmtime_caller_t *caller, pw_val_raw *raw, size_t nraw)
{
    const phase_wasi_binding *b = (const phase_wasi_binding *) env;
    phase_job *job = current_job;
    pw_job_state *st = (pw_job_state *) job->engine_state;
    uint64_t slots[16];
    size_t k = 0;
    const char *sig = b->signature;
    int returns = sig[0] != 'v';
    if (returns)
        slots[k++] = 0;
    size_t i = 0;
    for (const char *p = sig + 2; *p && *p != ')' && k < 16 && i < nraw; p++, i++)
        slots[k++] = *p == 'I' ? (uint64_t) raw[i].i64 : (uint64_t) (uint32_t) raw[i].i32;

    if (!st->has_memory) {
        /* During instantiation (a start function) the instance's exports are not ours yet: ask the caller. */
        pw_extern ext;
        if (api.wasmtime_caller_export_get(caller, "memory", 6, &ext) && ext.kind == PW_EXTERN_MEMORY) {
            st->memory = ext.of.memory;
            st->has_memory = 1;
        }
    }
    wasmtime_context_t *ctx = api.wasmtime_caller_context(caller);
    phase_wasi_call call = {job, NULL, 0, 0, b->userdata};
    if (st->has_memory) {
        call.mem = api.wasmtime_memory_data(ctx, &st->memory);
        call.mem_size = api.wasmtime_memory_data_size(ctx, &st->memory);
    }
    if (job->spec->deterministic)
        job->fuel_handed = fuel_consumed(job, st);
    const char *trap = b->call(&call, slots);
    if (call.ticks && st->metered) {
        uint64_t left = 0;
        wasmtime_error_t *e = api.wasmtime_context_get_fuel(ctx, &left);
        if (e)
            api.wasmtime_error_delete(e);
        else if ((e = api.wasmtime_context_set_fuel(ctx, left > call.ticks ? left - call.ticks : 0)) != NULL)
            api.wasmtime_error_delete(e);
    }
    if (trap) {
        st->host_trap = trap;
        return api.wasmtime_trap_new(trap, strlen(trap));
    }
    if (returns && nraw)
        raw[0].i32 = (int32_t) (uint32_t) slots[0];
    return NULL;
}

static wasm_functype_t *functype_of(const char *sig)
{
    wasm_valtype_t *params[16];
    size_t n = 0;
    for (const char *p = sig + 2; *p && *p != ')' && n < 16; p++)
        params[n++] = api.wasm_valtype_new(*p == 'I' ? PW_I64 : PW_I32);
    pw_valtype_vec pv, rv;
    api.wasm_valtype_vec_new(&pv, n, params);
    if (sig[0] == 'v') {
        api.wasm_valtype_vec_new_empty(&rv);
    } else {
        wasm_valtype_t *r = api.wasm_valtype_new(sig[0] == 'I' ? PW_I64 : PW_I32);
        api.wasm_valtype_vec_new(&rv, 1, &r);
    }
    return api.wasm_functype_new(&pv, &rv);
}

static void *ticker_main(void *arg)
{
    (void) arg;
    pthread_mutex_lock(&state_lock);
    for (;;) {
        while (!active_jobs)
            pthread_cond_wait(&ticker_wake, &state_lock);
        pthread_mutex_unlock(&state_lock);
        struct timespec ts = {0, PHASE_EPOCH_TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
        phase_wasmtime_tick();
        pthread_mutex_lock(&state_lock);
    }
    return NULL;
}

/* Address space a pool of `slots` reserves: each linear memory slot with its guards, each table slot. */
static uint64_t pool_bytes(unsigned slots)
{
    return (uint64_t) slots * (PHASE_WASMTIME_RESERVATION + 2 * PHASE_WASMTIME_GUARD
                               + PHASE_WASMTIME_POOL_TABLE_ELEMENTS * sizeof(void *) + (1u << 20));
}

/* Whether this process can reserve a pool: no address-space limit, and the reservation itself succeeds (wasmtime
 * aborts the process when it cannot make an engine, so we ask the kernel first). */
static int pool_fits(unsigned slots)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur != RLIM_INFINITY)
        return 0;
    size_t bytes = (size_t) pool_bytes(slots);
    void *p = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    munmap(p, bytes);
    return 1;
}

/* A new engine for configuration index, with its WASI linker; pooling with `slots` slots, or on demand (0). */
static int make_engine(int index, unsigned slots, wasm_engine_t **engine_out, wasmtime_linker_t **linker_out,
                       char *err, size_t errlen)
{
    wasm_config_t *config = api.wasm_config_new();
    api.wasmtime_config_consume_fuel_set(config, index & 1);
    /* Epoch checks at every function entry and loop head cost up to 1.7x on call-heavy code: only engines for
     * jobs with a wall-clock limit have them (nothing else interrupts a job that runs in process). */
    api.wasmtime_config_epoch_interruption_set(config, (index >> 2) & 1);
    api.wasmtime_config_max_wasm_stack_set(config, PHASE_WASMTIME_STACK);
    api.wasmtime_config_parallel_compilation_set(config, 0);
    api.wasmtime_config_cranelift_nan_canonicalization_set(config, (index >> 1) & 1);
    api.wasmtime_config_memory_reservation_set(config, PHASE_WASMTIME_RESERVATION);
    api.wasmtime_config_memory_guard_size_set(config, PHASE_WASMTIME_GUARD);
    /* Data segments are copied at instantiation, as on wasm3: copy-on-write images would need a memfd made
     * on a module's first instantiation, which a sandbox worker may not create (nor keep: it closes fds). */
    api.wasmtime_config_memory_init_cow_set(config, 0);
    if (slots) {
        /* Bounds of one instance: our validator admits one memory (wasm32: at most the reservation) and one
         * table of at most 2^20 elements; anything beyond (or a busy pool) spills to the on-demand twin. */
        wasmtime_pooling_allocation_config_t *pool = api.wasmtime_pooling_allocation_config_new();
        api.wasmtime_pooling_allocation_config_total_core_instances_set(pool, slots);
        api.wasmtime_pooling_allocation_config_total_memories_set(pool, slots);
        api.wasmtime_pooling_allocation_config_total_tables_set(pool, slots);
        api.wasmtime_pooling_allocation_config_total_stacks_set(pool, 1);
        api.wasmtime_pooling_allocation_config_total_gc_heaps_set(pool, 1);
        api.wasmtime_pooling_allocation_config_max_memories_per_module_set(pool, 1);
        api.wasmtime_pooling_allocation_config_max_tables_per_module_set(pool, 1);
        api.wasmtime_pooling_allocation_config_max_memory_size_set(pool, (size_t) PHASE_WASMTIME_RESERVATION);
        api.wasmtime_pooling_allocation_config_table_elements_set(pool, PHASE_WASMTIME_POOL_TABLE_ELEMENTS);
        api.wasmtime_pooling_allocation_config_max_core_instance_size_set(pool, PHASE_WASMTIME_POOL_INSTANCE_BYTES);
        /* a small table is zeroed in place rather than given back to the kernel (one madvise less per job) */
        api.wasmtime_pooling_allocation_config_table_keep_resident_set(pool, 16u << 10);
        api.wasmtime_pooling_allocation_strategy_set(config, pool);
        api.wasmtime_pooling_allocation_config_delete(pool);
    }
    wasm_engine_t *engine = api.wasm_engine_new_with_config(config);
    wasmtime_linker_t *linker = engine ? api.wasmtime_linker_new(engine) : NULL;
    if (!engine || !linker) {
        if (engine)
            api.wasm_engine_delete(engine);
        errf(err, errlen, "wasmtime could not make an engine");
        return -1;
    }
    const phase_wasi_binding *b;
    for (uint32_t i = 0; (b = phase_wasi_binding_at(i)) != NULL; i++) {
        wasm_functype_t *ty = functype_of(b->signature);
        wasmtime_error_t *e = api.wasmtime_linker_define_func_unchecked(
            linker, PHASE_WASI_MODULE, sizeof PHASE_WASI_MODULE - 1, b->name, strlen(b->name), ty, wasi_callback,
            (void *) b, NULL);
        api.wasm_functype_delete(ty);
        if (e) {
            error_text(e, err, errlen);
            api.wasmtime_linker_delete(linker);
            api.wasm_engine_delete(engine);
            return -1;
        }
    }
    *engine_out = engine;
    *linker_out = linker;
    return 0;
}

/* The engine for index (metered | nans << 1 | epoch << 2), made with its linker on first use (pooled when this
 * process pools and the pool fits). NULL with a message. */
static wasm_engine_t *engine_for(int index, char *err, size_t errlen)
{
    pthread_mutex_lock(&state_lock);
    if (!loaded) {
        errf(err, errlen, "%s", load_error);
        pthread_mutex_unlock(&state_lock);
        return NULL;
    }
    if (!engines[index]) {
        unsigned slots = pool_slots && pool_fits(pool_slots) ? pool_slots : 0;
        wasm_engine_t *engine;
        if (make_engine(index, slots, &engine, &linkers[index], err, errlen) != 0) {
            pthread_mutex_unlock(&state_lock);
            return NULL;
        }
        __atomic_store_n(&pooled[index], slots != 0, __ATOMIC_RELAXED);
        __atomic_store_n(&engines[index], engine, __ATOMIC_RELEASE);
    }
    wasm_engine_t *engine = engines[index];
    pthread_mutex_unlock(&state_lock);
    return engine;
}

/* The on-demand twin of pooled engine index. NULL with a message. */
static wasm_engine_t *spill_engine_for(int index, char *err, size_t errlen)
{
    pthread_mutex_lock(&state_lock);
    if (!spill_engines[index]) {
        wasm_engine_t *engine;
        if (make_engine(index, 0, &engine, &spill_linkers[index], err, errlen) != 0) {
            pthread_mutex_unlock(&state_lock);
            return NULL;
        }
        __atomic_store_n(&spill_engines[index], engine, __ATOMIC_RELEASE);
    }
    wasm_engine_t *engine = spill_engines[index];
    pthread_mutex_unlock(&state_lock);
    return engine;
}

/* ---- compiled code --------------------------------------------------------------------------------------- */

static struct phase_jit_cache *jit_cache(phase_module *pm)
{
    struct phase_jit_cache *c = __atomic_load_n(&pm->jit, __ATOMIC_ACQUIRE);
    if (c)
        return c;
    pthread_mutex_lock(&state_lock);
    if (!pm->jit) {
        c = calloc(1, sizeof *c);
        if (c) {
            pthread_mutex_init(&c->lock, NULL);
            __atomic_store_n(&pm->jit, c, __ATOMIC_RELEASE);
        }
    }
    c = pm->jit;
    pthread_mutex_unlock(&state_lock);
    return c;
}

/* The module compiled for engine index, compiling it now if needed (the caller's thread). NULL with a message. */
static wasmtime_module_t *compiled_for(phase_module *pm, int index, uint64_t *compile_us, char *err, size_t errlen)
{
    wasm_engine_t *engine = engine_for(index, err, errlen);
    struct phase_jit_cache *c = engine ? jit_cache(pm) : NULL;
    if (!c) {
        if (engine)
            errf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    if (!c->compiled[index] && !__atomic_load_n(&compiling_allowed, __ATOMIC_RELAXED)) {
        errf(err, errlen, "the module's compiled code is not here (a sandbox worker runs only code its fork server "
                          "compiled)");
        pthread_mutex_unlock(&c->lock);
        return NULL;
    }
    if (!c->compiled[index]) {
        uint64_t t0 = phase_now_ns();
        wasmtime_module_t *m = NULL;
        wasmtime_error_t *e = api.wasmtime_module_new(engine, pm->bytes, pm->len, &m);
        if (e) {
            char why[200];
            error_text(e, why, sizeof why);
            errf(err, errlen, "wasmtime cannot compile the module: %s", why);
            pthread_mutex_unlock(&c->lock);
            return NULL;
        }
        c->compiled[index] = m;
        c->compile_us[index] = (phase_now_ns() - t0) / 1000;
        if (compile_us)
            *compile_us = c->compile_us[index];
    }
    wasmtime_module_t *m = c->compiled[index];
    pthread_mutex_unlock(&c->lock);
    return m;
}

static int engine_index(const phase_limits *limits, int deterministic)
{
    return (limits->fuel != 0) | ((deterministic != 0) << 1) | ((limits->timeout_ms != 0) << 2);
}

int phase_wasmtime_compile(phase_module *pm, const phase_limits *limits, int deterministic, uint64_t *compile_us,
                           char *err, size_t errlen)
{
    uint64_t us = 0;
    wasmtime_module_t *m = compiled_for(pm, engine_index(limits, deterministic), &us, err, errlen);
    if (compile_us)
        *compile_us = us;
    return m ? 0 : -1;
}

int phase_wasmtime_is_compiled(phase_module *pm, const phase_limits *limits, int deterministic)
{
    struct phase_jit_cache *c = __atomic_load_n(&pm->jit, __ATOMIC_ACQUIRE);
    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    int yes = c->compiled[engine_index(limits, deterministic)] != NULL;
    pthread_mutex_unlock(&c->lock);
    return yes;
}

int phase_wasmtime_serialize(phase_module *pm, const phase_limits *limits, int deterministic, uint8_t **out,
                             size_t *out_len, char *err, size_t errlen)
{
    wasmtime_module_t *m = compiled_for(pm, engine_index(limits, deterministic), NULL, err, errlen);
    if (!m)
        return -1;
    pw_byte_vec v = {0, NULL};
    wasmtime_error_t *e = api.wasmtime_module_serialize(m, &v);
    if (e) {
        error_text(e, err, errlen);
        return -1;
    }
    *out = malloc(v.size ? v.size : 1);
    if (!*out) {
        api.wasm_byte_vec_delete(&v);
        errf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(*out, v.data, v.size);
    *out_len = v.size;
    api.wasm_byte_vec_delete(&v);
    return 0;
}

int phase_wasmtime_deserialize(phase_module *pm, const phase_limits *limits, int deterministic, const uint8_t *bytes,
                               size_t len, char *err, size_t errlen)
{
    int index = engine_index(limits, deterministic);
    wasm_engine_t *engine = engine_for(index, err, errlen);
    struct phase_jit_cache *c = engine ? jit_cache(pm) : NULL;
    if (!c)
        return -1;
    wasmtime_module_t *m = NULL;
    /* wasmtime checks the artifact's header (version, engine settings) and refuses a mismatch. */
    wasmtime_error_t *e = api.wasmtime_module_deserialize(engine, bytes, len, &m);
    if (e) {
        error_text(e, err, errlen);
        return -1;
    }
    pthread_mutex_lock(&c->lock);
    if (c->compiled[index])
        api.wasmtime_module_delete(m);
    else
        c->compiled[index] = m;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

void phase_wasmtime_module_free(phase_module *pm)
{
    struct phase_jit_cache *c = pm->jit;
    if (!c)
        return;
    for (int i = 0; i < PW_ENGINES; i++) {
        if (c->pre[i])
            api.wasmtime_instance_pre_delete(c->pre[i]);
        if (c->spill_pre[i])
            api.wasmtime_instance_pre_delete(c->spill_pre[i]);
        if (c->compiled[i])
            api.wasmtime_module_delete(c->compiled[i]);
        if (c->spill[i])
            api.wasmtime_module_delete(c->spill[i]);
    }
    pthread_mutex_destroy(&c->lock);
    free(c);
    pm->jit = NULL;
}

/* The module's code on the spill engine: wasmtime's own bytes of the pooled engine's code (the two engines differ
 * only in how they allocate), or a compile if it refuses them. c->lock held. NULL with a message. */
static wasmtime_module_t *spill_code(phase_module *pm, struct phase_jit_cache *c, int index, wasm_engine_t *engine,
                                     char *err, size_t errlen)
{
    if (c->spill[index])
        return c->spill[index];
    wasmtime_module_t *m = NULL;
    pw_byte_vec v = {0, NULL};
    wasmtime_error_t *e = api.wasmtime_module_serialize(c->compiled[index], &v);
    if (!e) {
        e = api.wasmtime_module_deserialize(engine, v.data, v.size, &m);
        api.wasm_byte_vec_delete(&v);
    }
    if (e) {
        api.wasmtime_error_delete(e);
        m = NULL;
        if ((e = api.wasmtime_module_new(engine, pm->bytes, pm->len, &m)) != NULL) {
            char why[200];
            error_text(e, why, sizeof why);
            errf(err, errlen, "wasmtime cannot compile the module: %s", why);
            return NULL;
        }
    }
    return c->spill[index] = m;
}

/* The InstancePre a job of pm on engine index instantiates from (imports resolved once per module and engine),
 * on the spill engine if `spill`. The code is compiled already. NULL with a message. */
static wasmtime_instance_pre_t *instance_pre(phase_module *pm, int index, int spill, char *err, size_t errlen)
{
    wasm_engine_t *engine = spill ? spill_engine_for(index, err, errlen) : engines[index];
    struct phase_jit_cache *c = pm->jit;
    if (!engine || !c)
        return NULL;
    pthread_mutex_lock(&c->lock);
    wasmtime_instance_pre_t **slot = spill ? &c->spill_pre[index] : &c->pre[index];
    if (!*slot) {
        wasmtime_module_t *m = spill ? spill_code(pm, c, index, engine, err, errlen) : c->compiled[index];
        wasmtime_error_t *e = m ? api.wasmtime_linker_instantiate_pre(spill ? spill_linkers[index] : linkers[index], m,
                                                                       slot)
                                : NULL;
        if (e) {
            char why[200];
            error_text(e, why, sizeof why);
            errf(err, errlen, "wasmtime cannot link the module: %s", why);
            *slot = NULL;
        }
    }
    wasmtime_instance_pre_t *pre = *slot;
    pthread_mutex_unlock(&c->lock);
    return pre;
}

/* A slot of pooled engine index for one job (1), or none free (0: the job spills). */
static int pool_take(int index)
{
    if (!__atomic_load_n(&pooled[index], __ATOMIC_RELAXED))
        return 0;
    if (__atomic_add_fetch(&pool_busy[index], 1, __ATOMIC_ACQ_REL) <= pool_slots)
        return 1;
    __atomic_sub_fetch(&pool_busy[index], 1, __ATOMIC_ACQ_REL);
    return 0;
}

/* ---- a job ----------------------------------------------------------------------------------------------- */

static wasmtime_error_t *on_epoch(wasmtime_context_t *ctx, void *env, uint64_t *delta, uint8_t *kind)
{
    (void) ctx;
    phase_job *job = (phase_job *) env;
    pw_job_state *st = (pw_job_state *) job->engine_state;
    if (atomic_load_explicit(&job->interrupt, memory_order_relaxed)) {
        st->host_trap = phase_trap_interrupted;
        return api.wasmtime_error_new(phase_trap_interrupted);
    }
    if (job->deadline_ns && phase_now_ns() >= job->deadline_ns) {
        st->host_trap = phase_trap_timeout;
        return api.wasmtime_error_new(phase_trap_timeout);
    }
    *delta = 1;
    *kind = PW_DEADLINE_CONTINUE;
    return NULL;
}

/* wasmtime's trap codes as wasm3's trap strings, so that a trap reads the same on both engines. */
static const char *trap_string(wasm_trap_t *trap, char *buf, size_t len)
{
    uint8_t code;
    if (api.wasmtime_trap_code(trap, &code)) {
        switch (code) {
        case PW_TRAP_STACK_OVERFLOW: return m3Err_trapStackOverflow;
        case PW_TRAP_MEMORY_OUT_OF_BOUNDS: case PW_TRAP_HEAP_MISALIGNED: return m3Err_trapOutOfBoundsMemoryAccess;
        case PW_TRAP_TABLE_OUT_OF_BOUNDS: return m3Err_trapTableIndexOutOfRange;
        case PW_TRAP_INDIRECT_CALL_TO_NULL: return m3Err_trapTableElementIsNull;
        case PW_TRAP_BAD_SIGNATURE: return m3Err_trapIndirectCallTypeMismatch;
        case PW_TRAP_INTEGER_OVERFLOW: return m3Err_trapIntegerOverflow;
        case PW_TRAP_INTEGER_DIVISION_BY_ZERO: return m3Err_trapDivisionByZero;
        case PW_TRAP_BAD_CONVERSION_TO_INTEGER: return m3Err_trapIntegerConversion;
        case PW_TRAP_UNREACHABLE: return m3Err_trapUnreachable;
        case PW_TRAP_INTERRUPT: return phase_trap_timeout;
        case PW_TRAP_OUT_OF_FUEL: return phase_trap_fuel_exhausted;
        default: break;
        }
    }
    pw_byte_vec msg = {0, NULL};
    api.wasm_trap_message(trap, &msg);
    snprintf(buf, len, "[trap] %.*s", (int) (msg.size > 180 ? 180 : msg.size), msg.data ? (const char *) msg.data : "");
    api.wasm_byte_vec_delete(&msg);
    return buf;
}

/* What ended a call: NULL (returned), our host trap, or a trap/error as a "[trap] ..." string in buf. */
static const char *call_outcome(pw_job_state *st, wasmtime_error_t *error, wasm_trap_t *trap, char *buf,
                                size_t len)
{
    const char *r = NULL;
    if (trap) {
        r = st->host_trap ? st->host_trap : trap_string(trap, buf, len);
        api.wasm_trap_delete(trap);
    } else if (error) {
        if (st->host_trap) {
            r = st->host_trap;
            api.wasmtime_error_delete(error);
        } else {
            char why[200];
            error_text(error, why, sizeof why);
            snprintf(buf, len, "wasmtime: %s", why);
            r = buf;
        }
    }
    return r;
}

static void job_begin(void)
{
    pthread_mutex_lock(&state_lock);
    active_jobs++;
    if (ticker_enabled && !ticker_started) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        if (pthread_create(&t, &attr, ticker_main, NULL) == 0)
            ticker_started = 1;
        pthread_attr_destroy(&attr);
    }
    pthread_cond_signal(&ticker_wake);
    pthread_mutex_unlock(&state_lock);
}

static void job_end(void)
{
    pthread_mutex_lock(&state_lock);
    active_jobs--;
    pthread_mutex_unlock(&state_lock);
}

/* A store for one job on engine, with the job's limits: memory (the limiter), fuel, the epoch deadline. */
static wasmtime_store_t *job_store(phase_job *job, pw_job_state *st, wasm_engine_t *engine, int epoch)
{
    const phase_job_spec *spec = job->spec;
    wasmtime_store_t *store = api.wasmtime_store_new(engine, job, NULL);
    if (!store)
        return NULL;
    wasmtime_context_t *ctx = api.wasmtime_store_context(store);
    st->context = ctx;
    api.wasmtime_store_limiter(store, (int64_t) spec->limits.memory_bytes, -1, -1, -1, -1);
    if (st->metered) {
        st->fuel_start = spec->limits.fuel;
        wasmtime_error_t *e = api.wasmtime_context_set_fuel(ctx, spec->limits.fuel);
        if (e)
            api.wasmtime_error_delete(e);
    }
    if (epoch) {
        api.wasmtime_store_epoch_deadline_callback(store, on_epoch, job, NULL);
        api.wasmtime_context_set_epoch_deadline(ctx, 1);
    }
    return store;
}

void phase_wasmtime_run(phase_job *job, phase_job_classify classify)
{
    const phase_job_spec *spec = job->spec;
    phase_result *res = job->result;
    phase_module *pm = (phase_module *) spec->module;
    char buf[PHASE_MESSAGE_BYTES];
    int index = engine_index(&spec->limits, spec->deterministic);
    uint64_t compile_us = 0;
    wasmtime_module_t *module = compiled_for(pm, index, &compile_us, buf, sizeof buf);
    res->compile_us = compile_us;
    if (compile_us)
        job->start_ns = phase_now_ns(); /* wall_us and the deadline count the run, not the compile (compile_us) */
    if (!module) {
        res->status = loaded ? PHASE_INVALID_MODULE : PHASE_REJECTED;
        snprintf(res->message, sizeof res->message, "%s", buf);
        return;
    }
    int epoch = (index >> 2) & 1;
    int slot = pool_take(index);
    int spill = __atomic_load_n(&pooled[index], __ATOMIC_RELAXED) && !slot;
    pw_job_state st;
    job->engine_state = &st;
    job->unlimited_fuel = spec->limits.fuel == 0;
    if (spec->limits.timeout_ms)
        job->deadline_ns = job->start_ns + spec->limits.timeout_ms * 1000000ull;
    phase_job *outer = current_job;
    current_job = job;
    if (epoch)
        job_begin();
    wasmtime_store_t *store = NULL;
    wasmtime_context_t *ctx = NULL;
    pw_instance inst;
    wasm_trap_t *trap = NULL;
    wasmtime_error_t *error = NULL;
    for (;;) {
        memset(&st, 0, sizeof st);
        st.metered = index & 1;
        wasmtime_instance_pre_t *pre = instance_pre(pm, index, spill, buf, sizeof buf);
        store = pre ? job_store(job, &st, spill ? spill_engines[index] : engines[index], epoch) : NULL;
        if (!store) {
            res->status = pre ? PHASE_CRASHED : PHASE_INVALID_MODULE;
            if (pre)
                snprintf(res->message, sizeof res->message, "wasmtime could not make a store");
            else
                snprintf(res->message, sizeof res->message, "%s", buf);
            goto done;
        }
        ctx = st.context;
        trap = NULL;
        error = api.wasmtime_instance_pre_instantiate(pre, ctx, &inst, &trap);
        if (!(error && slot && !trap && !st.host_trap))
            break;
        /* The pool refused this instance (beyond its slots' bounds): the job runs on the on-demand twin. */
        api.wasmtime_error_delete(error);
        api.wasmtime_store_delete(store);
        store = NULL;
        __atomic_sub_fetch(&pool_busy[index], 1, __ATOMIC_ACQ_REL);
        slot = 0;
        spill = 1;
    }
    const char *r = call_outcome(&st, error, trap, buf, sizeof buf);
    int32_t returned = 0;
    if (!r) {
        pw_extern ext;
        if (api.wasmtime_instance_export_get(ctx, &inst, "memory", 6, &ext) && ext.kind == PW_EXTERN_MEMORY) {
            st.memory = ext.of.memory;
            st.has_memory = 1;
        }
        const char *entry = spec->entry ? spec->entry : "_start";
        if (!api.wasmtime_instance_export_get(ctx, &inst, entry, strlen(entry), &ext) || ext.kind != PW_EXTERN_FUNC) {
            res->status = PHASE_INVALID_MODULE;
            snprintf(res->message, sizeof res->message,
                     "the module exports no function named '%s' (phase --entry; a WASI command exports _start)", entry);
            goto done;
        }
        wasm_functype_t *ty = api.wasmtime_func_type(ctx, &ext.of.func);
        const pw_valtype_vec *params = api.wasm_functype_params(ty);
        const pw_valtype_vec *results = api.wasm_functype_results(ty);
        size_t nrets = results->size;
        int ok = params->size == 0 && nrets <= 1 && (nrets == 0 || api.wasm_valtype_kind(results->data[0]) == PW_I32);
        api.wasm_functype_delete(ty);
        if (!ok) {
            res->status = PHASE_INVALID_MODULE;
            snprintf(res->message, sizeof res->message,
                     "entry '%s' must take no arguments and return nothing or one i32", entry);
            goto done;
        }
        pw_val_raw raw[1];
        memset(raw, 0, sizeof raw);
        trap = NULL;
        error = api.wasmtime_func_call_unchecked(ctx, &ext.of.func, raw, 1, &trap);
        r = call_outcome(&st, error, trap, buf, sizeof buf);
        if (!r && nrets == 1)
            returned = raw[0].i32;
    }
    if (r == phase_trap_exit)
        r = m3Err_trapExit;
    if (r && r != m3Err_trapExit && r != phase_trap_output_limit && r != phase_trap_timeout
        && r != phase_trap_interrupted && r != phase_trap_fuel_exhausted && pm->info.has_memory && st.has_memory) {
        /* The store limiter refuses growth past the limit (memory.grow returns -1) without telling us; a trap soon
         * after is the module failing for want of memory. We infer it: a trap while memory is within an eighth of
         * the limit (at most 16 MiB) is memory_limit. wasm3 sees the refusal itself; see docs/SANDBOX.md. */
        uint64_t size = api.wasmtime_memory_data_size(ctx, &st.memory);
        uint64_t window = spec->limits.memory_bytes / 8;
        if (window > (16u << 20))
            window = 16u << 20;
        if (window < PHASE_WASM_PAGE)
            window = PHASE_WASM_PAGE;
        if (size + window > spec->limits.memory_bytes) {
            job->grow_refused = 1;
            job->grow_requested_pages = size / PHASE_WASM_PAGE + 1;
        }
    }
    classify(job, r, returned);
done:
    if (epoch)
        job_end();
    current_job = outer;
    if (store) {
        job->fuel_handed = fuel_consumed(job, &st);
        res->fuel_used = job->fuel_handed;
        if (st.has_memory)
            res->memory_peak_bytes = api.wasmtime_memory_data_size(ctx, &st.memory);
        api.wasmtime_store_delete(store);
    }
    if (slot)
        __atomic_sub_fetch(&pool_busy[index], 1, __ATOMIC_ACQ_REL);
    job->engine_state = NULL;
}
