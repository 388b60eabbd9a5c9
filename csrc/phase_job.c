/* The job executor: validate once, then per job parse -> load -> link -> arm limits -> run -> hash.
 *
 * wasm3 cannot reuse a parsed module across runtimes, so a job re-parses (microseconds) the bytes
 * that phase_module_new() validated once. Every limit is armed before m3_FindFunction, because
 * that call compiles lazily and runs the start function. A module nesting deeper than
 * PHASE_LAZY_COMPILE_DEPTH is compiled whole when its instance is made (phase_stack.c).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "phase_arena.h"
#include "phase_internal.h"
#include "phase_wasi.h"
#include "phase_wasmtime.h"

const char *const phase_trap_fuel_exhausted = "[trap] fuel exhausted";
const char *const phase_trap_timeout = "[trap] wall-clock timeout";
const char *const phase_trap_interrupted = "[trap] interrupted";

/* Native stack kept free below the deepest wasm frame: room for host functions and libc. */
#define PHASE_NATIVE_STACK_RESERVE (256u * 1024u)

static const char *const status_names[PHASE_STATUS_COUNT] = {
    "ok", "trap", "timeout", "fuel_exhausted", "memory_limit", "output_limit", "invalid_module", "rejected", "crashed",
};

const char *phase_status_name(phase_status status)
{
    return (unsigned) status < PHASE_STATUS_COUNT ? status_names[status] : "unknown";
}

void phase_limits_default(phase_limits *limits)
{
    limits->memory_bytes = 64ull << 20;
    limits->fuel = 0;
    limits->timeout_ms = 10000;
    limits->output_bytes = 1ull << 20;
    limits->stack_bytes = 512u << 10;
}

uint64_t phase_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

/* ---- module ------------------------------------------------------------------------------ */

/* At most this many idle instances per module: one per thread that runs it concurrently. */
#define PHASE_POOL_MAX 4

struct phase_instance_pool {
    pthread_mutex_t lock;
    phase_instance *idle;
    unsigned count;
};

typedef struct import_scan {
    uint64_t mask;
} import_scan;

static int check_import(void *ctx, const char *module, size_t module_len, const char *name, size_t name_len,
                        const char *signature, char *err, size_t errlen)
{
    int bit = phase_wasi_lookup(module, module_len, name, name_len, signature, err, errlen);
    if (bit < 0)
        return -1;
    ((import_scan *) ctx)->mask |= 1ull << bit;
    return 0;
}

static phase_module *module_made(const uint8_t *bytes, size_t len, const phase_wasm_info *info, uint64_t wasi_imports,
                                  char *err, size_t errlen);
static phase_module *module_kept(uint8_t *bytes, size_t len, const uint8_t *hash, const phase_wasm_info *info,
                                 uint64_t wasi_imports, char *err, size_t errlen);

/* Our validator over bytes: 0 with what it found (info, the WASI import mask), or -1 with the reason. */
static int validated(const uint8_t *bytes, size_t len, phase_wasm_info *info, uint64_t *wasi_imports, char *err,
                     size_t errlen)
{
    phase_wasm_caps caps;
    phase_wasm_caps_default(&caps);
    import_scan scan = {0};
    memset(info, 0, sizeof *info);
    if (phase_wasm_validate(bytes, len, &caps, check_import, &scan, info, err, errlen) != 0)
        return -1;
    *wasi_imports = scan.mask;
    return 0;
}

phase_module *phase_module_new(const uint8_t *bytes, size_t len, char *err, size_t errlen)
{
    phase_wasm_info info;
    uint64_t wasi_imports;
    if (validated(bytes, len, &info, &wasi_imports, err, errlen) != 0)
        return NULL;
    return module_made(bytes, len, &info, wasi_imports, err, errlen);
}

phase_module *phase_module_new_in_place(uint8_t *bytes, size_t len, const uint8_t hash[PHASE_SHA256_BYTES], char *err,
                                        size_t errlen)
{
    phase_wasm_info info;
    uint64_t wasi_imports;
    if (validated(bytes, len, &info, &wasi_imports, err, errlen) != 0)
        return NULL;
    return module_kept(bytes, len, hash, &info, wasi_imports, err, errlen);
}

void phase_module_facts(const phase_module *module, uint64_t facts[PHASE_MODULE_FACTS])
{
    const phase_wasm_info *i = &module->info;
    const uint64_t values[PHASE_MODULE_FACTS] = {
        (uint64_t) i->has_memory,      i->mem_initial_pages,      (uint64_t) i->mem_has_max, i->mem_max_pages,
        i->num_imported_functions,     i->num_defined_functions,  i->num_types,              i->num_exports,
        (uint64_t) i->has_start,       i->start_function,         (uint64_t) i->has_table,   i->table_initial,
        (uint64_t) i->table_has_max,   i->table_max,              i->num_globals,            i->num_data_segments,
        i->num_elem_segments,          i->max_nesting_depth,      module->wasi_imports,
    };
    memcpy(facts, values, sizeof values);
}

phase_module *phase_module_new_validated(const uint8_t *bytes, size_t len, const uint8_t hash[PHASE_SHA256_BYTES],
                                         const uint64_t facts[PHASE_MODULE_FACTS], char *err, size_t errlen)
{
    static const int flags[] = {0, 2, 8, 10, 12}; /* has_memory, mem_has_max, has_start, has_table, table_has_max */
    for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++)
        if (facts[flags[k]] > 1) {
            snprintf(err, errlen, "fact %d out of range", flags[k]);
            return NULL;
        }
    for (int k = 0; k < PHASE_MODULE_FACTS - 1; k++)
        if (facts[k] > UINT32_MAX) {
            snprintf(err, errlen, "fact %d out of range", k);
            return NULL;
        }
    uint64_t known = phase_wasi_count() >= 64 ? UINT64_MAX : (1ull << phase_wasi_count()) - 1;
    if (facts[PHASE_MODULE_FACTS - 1] & ~known) {
        snprintf(err, errlen, "imports a WASI function this host does not have");
        return NULL;
    }
    phase_wasm_info info = {
        .has_memory = (int) facts[0],           .mem_initial_pages = (uint32_t) facts[1],
        .mem_has_max = (int) facts[2],          .mem_max_pages = (uint32_t) facts[3],
        .num_imported_functions = (uint32_t) facts[4], .num_defined_functions = (uint32_t) facts[5],
        .num_types = (uint32_t) facts[6],       .num_exports = (uint32_t) facts[7],
        .has_start = (int) facts[8],            .start_function = (uint32_t) facts[9],
        .has_table = (int) facts[10],           .table_initial = (uint32_t) facts[11],
        .table_has_max = (int) facts[12],       .table_max = (uint32_t) facts[13],
        .num_globals = (uint32_t) facts[14],    .num_data_segments = (uint32_t) facts[15],
        .num_elem_segments = (uint32_t) facts[16], .max_nesting_depth = (uint32_t) facts[17],
    };
    phase_module *module = module_made(bytes, len, &info, facts[PHASE_MODULE_FACTS - 1], err, errlen);
    if (module && memcmp(module->hash, hash, PHASE_SHA256_BYTES) != 0) {
        phase_module_free(module);
        snprintf(err, errlen, "the bytes are not the module the record names");
        return NULL;
    }
    return module;
}

static phase_module *module_made(const uint8_t *bytes, size_t len, const phase_wasm_info *info, uint64_t wasi_imports,
                                  char *err, size_t errlen)
{
    uint8_t *copy = phase_arena_calloc(len ? len : 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory copying a module of %zu bytes", len);
        return NULL;
    }
    memcpy(copy, bytes, len);
    phase_module *module = module_kept(copy, len, NULL, info, wasi_imports, err, errlen);
    if (!module)
        phase_arena_release(copy);
    return module;
}

/* A module that holds `bytes` itself (NULL: they stay the caller's); `hash` their sha256 if known, else computed. */
static phase_module *module_kept(uint8_t *bytes, size_t len, const uint8_t *hash, const phase_wasm_info *info,
                                 uint64_t wasi_imports, char *err, size_t errlen)
{
    phase_module *module = calloc(1, sizeof *module);
    if (module)
        module->pool = calloc(1, sizeof *module->pool);
    if (!module || !module->pool) {
        free(module);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&module->pool->lock, NULL);
    module->bytes = bytes;
    module->len = len;
    module->info = *info;
    module->wasi_imports = wasi_imports;
    if (hash)
        memcpy(module->hash, hash, PHASE_SHA256_BYTES);
    else
        phase_sha256(bytes, len, module->hash);
    return module;
}

static void instance_free(phase_instance *inst);

void phase_module_free(phase_module *module)
{
    if (!module)
        return;
    if (module->pool) {
        for (phase_instance *inst = module->pool->idle, *next; inst; inst = next) {
            next = inst->next;
            instance_free(inst);
        }
        pthread_mutex_destroy(&module->pool->lock);
        free(module->pool);
    }
    phase_wasmtime_module_free(module);
    phase_arena_release(module->bytes);
    phase_arena_free(module->arena);
    free(module);
}

/* ---- hooks called by the patched interpreter --------------------------------------------- */

uint64_t phase_job_fuel_used(const phase_job *job)
{
    const M3MemoryHeader *mem = job->runtime ? job->runtime->memory.mallocated : NULL;
    int64_t countdown = mem ? mem->phase_fuel_countdown : 0;
    uint64_t used = job->fuel_handed - (uint64_t) (countdown > 0 ? countdown : 0);
    if (countdown < 0)
        used += (uint64_t) (-countdown);
    if (!job->unlimited_fuel && used > job->spec->limits.fuel)
        used = job->spec->limits.fuel;
    return used;
}

M3Result phase_meter_slow(M3MemoryHeader *mem)
{
    phase_job *job = ((phase_instance *) mem->runtime->userdata)->job;
    if (atomic_load_explicit(&job->interrupt, memory_order_relaxed))
        return phase_trap_interrupted;
    if (job->deadline_ns && phase_now_ns() >= job->deadline_ns)
        return phase_trap_timeout;
    /* The tick that brought the countdown below zero is a real tick: it is paid from the new chunk. */
    uint64_t owed = (uint64_t) (-mem->phase_fuel_countdown);
    if (job->fuel_left < owed) {
        job->fuel_handed += job->fuel_left;
        job->fuel_left = 0;
        mem->phase_fuel_countdown = 0;
        return phase_trap_fuel_exhausted;
    }
    uint64_t chunk = job->fuel_left < PHASE_FUEL_CHUNK ? job->fuel_left : PHASE_FUEL_CHUNK;
    if (chunk < owed)
        chunk = owed;
    job->fuel_left -= chunk;
    if (job->unlimited_fuel)
        job->fuel_left = UINT64_MAX / 2;
    job->fuel_handed += chunk;
    mem->phase_fuel_countdown = (int64_t) (chunk - owed);
    return m3Err_none;
}

void *phase_memory_resize(IM3Runtime runtime, void *old, size_t new_bytes, size_t max_bytes)
{
    phase_instance *inst = (phase_instance *) runtime->userdata;
    if (!old) {
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        size_t reserve = (max_bytes + page - 1) / page * page;
        /* Reserve the whole maximum once: untouched pages cost nothing and read as zero, so a
         * job pays for the memory it uses, not for what it declares; growth never moves memory. */
        void *p = mmap(NULL, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        inst->memory_reserved = reserve;
        return p;
    }
    return new_bytes <= inst->memory_reserved ? old : NULL;
}

void phase_memory_free(IM3Runtime runtime, void *mem)
{
    phase_instance *inst = (phase_instance *) runtime->userdata;
    if (mem)
        munmap(mem, inst->memory_reserved);
}

void phase_memory_grow_refused(IM3Runtime runtime, u64 requested_pages)
{
    phase_job *job = ((phase_instance *) runtime->userdata)->job;
    job->grow_refused = 1;
    job->grow_requested_pages = requested_pages;
}

/* ---- native stack ------------------------------------------------------------------------ */

static __thread uintptr_t tls_stack_low;

uintptr_t phase_native_stack_limit(void)
{
    if (!tls_stack_low) {
        pthread_attr_t attr;
        void *addr = NULL;
        size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &addr, &size);
            pthread_attr_destroy(&attr);
        }
        uintptr_t here = (uintptr_t) __builtin_frame_address(0);
        uintptr_t low = (uintptr_t) addr;
        /* Unknown or unlimited stacks: assume 1 MiB below here. */
        if (!addr || size == 0 || here < low || here - low > (64u << 20))
            low = here - (1u << 20);
        uintptr_t reserve = PHASE_NATIVE_STACK_RESERVE;
        if (here - low < 4 * reserve)
            reserve = (here - low) / 4;
        tls_stack_low = low + reserve;
    }
    return tls_stack_low;
}

/* ---- the job ----------------------------------------------------------------------------- */

static void set_message(phase_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_message(phase_result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

static const char *trap_text(M3Result r)
{
    return strncmp(r, "[trap] ", 7) == 0 ? r + 7 : r;
}

/* Map wasm3's result of the start function or the entry to a status. */
static void classify(phase_job *job, M3Result r, int32_t returned)
{
    phase_result *res = job->result;
    const phase_limits *lim = &job->spec->limits;
    if (r == m3Err_none) {
        res->status = PHASE_OK;
        res->exit_code = returned;
    } else if (r == m3Err_trapExit && job->exited) {
        res->status = PHASE_OK;
        res->exit_code = job->exit_code;
    } else if (r == phase_trap_output_limit) {
        res->status = PHASE_OUTPUT_LIMIT;
        set_message(res, "output exceeded the limit of %llu bytes (stdout and stderr together; "
                    "phase --output-limit, Limits(output_bytes=...))",
                    (unsigned long long) lim->output_bytes);
    } else if (r == phase_trap_fuel_exhausted) {
        res->status = PHASE_FUEL_EXHAUSTED;
        set_message(res, "fuel limit of %llu exhausted (phase --fuel, Limits(fuel=...); 0: none)", (unsigned long long) lim->fuel);
    } else if (r == phase_trap_timeout) {
        res->status = PHASE_TIMEOUT;
        set_message(res, "wall-clock limit of %llu ms passed (phase --timeout, Limits(timeout_ms=...); 0: none)", (unsigned long long) lim->timeout_ms);
    } else if (r == phase_trap_interrupted) {
        res->status = PHASE_TIMEOUT;
        set_message(res, "interrupted by the host");
    } else if (job->grow_refused && strncmp(r, "[trap]", 6) == 0) {
        res->status = PHASE_MEMORY_LIMIT;
        set_message(res, "memory.grow to %llu pages was refused (limit %llu bytes), then: %s",
                    (unsigned long long) job->grow_requested_pages,
                    (unsigned long long) (lim->memory_bytes < (uint64_t) d_m3MaxLinearMemoryPages * PHASE_WASM_PAGE
                                              ? lim->memory_bytes : (uint64_t) d_m3MaxLinearMemoryPages * PHASE_WASM_PAGE),
                    trap_text(r));
    } else if (strncmp(r, "[trap]", 6) == 0) {
        res->status = PHASE_TRAP;
        set_message(res, "%s", trap_text(r));
    } else if (!job->runtime) {
        /* The compiling engine could not instantiate what the validator accepted (its message says why). */
        res->status = PHASE_TRAP;
        set_message(res, "instantiation failed: %s", r);
    } else {
        /* Not a trap: wasm3 could not compile or link something the validator accepted. */
        M3ErrorInfo info;
        memset(&info, 0, sizeof info);
        m3_GetErrorInfo(job->runtime, &info);
        res->status = PHASE_INVALID_MODULE;
        if (info.message && *info.message)
            set_message(res, "wasm3: %s (%s)", r, info.message);
        else
            set_message(res, "wasm3: %s", r);
    }
    if (res->status != PHASE_OK)
        res->exit_code = -1;
}

/* ---- the wasm3 side of the WASI layer ----------------------------------------------------- */

/* Every WASI import links to this one adapter: it gives the function its view of the instance and bills the
 * fuel the call's byte moves cost to wasm3's meter. */
static m3ApiRawFunction(wasm3_wasi_call)
{
    const phase_wasi_binding *b = (const phase_wasi_binding *) _ctx->userdata;
    M3MemoryHeader *hdr = runtime->memory.mallocated;
    phase_wasi_call call = {((phase_instance *) runtime->userdata)->job, (uint8_t *) _mem, hdr ? hdr->length : 0,
                            0, b->userdata};
    const char *trap = b->call(&call, _sp);
    if (call.ticks && hdr)
        hdr->phase_fuel_countdown -= (int64_t) call.ticks;
    return trap == phase_trap_exit ? m3Err_trapExit : trap;
}

/* Link every WASI function the module imports. Returns NULL or a wasm3 error. */
static M3Result wasm3_wasi_link(const phase_module *pm, IM3Module module)
{
    const phase_wasi_binding *b;
    for (uint32_t i = 0; (b = phase_wasi_binding_at(i)) != NULL; i++) {
        if (!(pm->wasi_imports & (1ull << i)))
            continue;
        M3Result r = m3_LinkRawFunctionEx(module, PHASE_WASI_MODULE, b->name, b->signature, wasm3_wasi_call,
                                          (const void *) b);
        if (r && r != m3Err_functionLookupFailed)
            return r;
    }
    return m3Err_none;
}

/* wasm3 internals used to put an instance back into its just-instantiated state. */
M3Result InitDataSegments(M3Memory *io_memory, IM3Module io_module);

static void instance_free(phase_instance *inst)
{
    if (inst->runtime)
        m3_FreeRuntime(inst->runtime);      /* frees the loaded module and the linear memory */
    if (inst->env)
        m3_FreeEnvironment(inst->env);
    free(inst->global_init);
    free(inst);
}

static uint32_t capped_max_pages(const phase_module *pm, uint64_t cap_pages)
{
    if (!pm->info.has_memory)
        return 0;
    uint64_t declared = pm->info.mem_has_max ? pm->info.mem_max_pages : 65536;
    return (uint32_t) (declared < cap_pages ? declared : cap_pages);
}

int phase_table_presize(IM3Module module, const phase_wasm_info *info)
{
    /* wasm3 does not parse the table section: give table 0 its declared initial size, so element segments
     * are checked against it (patch 0008) and call_indirect's bounds are the declared ones. */
    if (!info->has_table || info->table_initial == 0)
        return 0;
    uint32_t size = info->table_initial < d_m3MaxSaneTableSize ? info->table_initial : d_m3MaxSaneTableSize;
    IM3Function *table = m3_AllocArray(IM3Function, size);
    if (!table)
        return -1;
    module->table0 = table;   /* wasm3's: freed with the module (in the fork server, its arena's) */
    module->table0Size = size;
    return 0;
}

/* Parse, cap memory, load and link a fresh instance. On failure returns NULL with the status set. */
static phase_instance *instance_new(phase_job *job, uint32_t max_pages)
{
    const phase_job_spec *spec = job->spec;
    const phase_module *pm = spec->module;
    phase_result *res = job->result;
    M3Result r;
    phase_instance *inst = calloc(1, sizeof *inst);
    if (!inst)
        goto oom;
    inst->job = job;
    inst->env = m3_NewEnvironment();
    if (!inst->env)
        goto oom;
    inst->runtime = m3_NewRuntime(inst->env, spec->limits.stack_bytes, inst);
    if (!inst->runtime)
        goto oom;
    job->runtime = inst->runtime;
    r = m3_ParseModule(inst->env, &inst->module, pm->bytes, (uint32_t) pm->len);
    if (r) {
        res->status = PHASE_INVALID_MODULE;
        set_message(res, "wasm3 cannot parse the module: %s", r);
        goto fail;
    }
    /* Cap growth here instead of through wasm3's memoryLimit, which truncates silently. */
    inst->module->memoryInfo.maxPages = max_pages;
    if (phase_table_presize(inst->module, &pm->info) != 0) {
        m3_FreeModule(inst->module);
        inst->module = NULL;
        goto oom;
    }
    inst->start_function = inst->module->startFunction;
    r = m3_LoadModule(inst->runtime, inst->module);
    if (r) {
        m3_FreeModule(inst->module);   /* the runtime owns a module only once it loaded */
        inst->module = NULL;
        if (r == m3Err_mallocFailed)
            goto oom;
        res->status = PHASE_TRAP;
        set_message(res, "instantiation failed: %s", trap_text(r));
        goto fail;
    }
    if ((r = wasm3_wasi_link(pm, inst->module)) != m3Err_none) {
        res->status = PHASE_INVALID_MODULE;
        set_message(res, "linking WASI imports failed: %s", r);
        goto fail;
    }
    if (pm->info.max_nesting_depth > PHASE_LAZY_COMPILE_DEPTH) {
        /* Too deep to compile lazily on the job's stack: compile it all now, on a stack sized for it. */
        const char *why = phase_compile_module(inst->module, pm->info.max_nesting_depth, &r);
        if (why) {
            res->status = PHASE_CRASHED;
            set_message(res, "%s", why);
            goto fail;
        }
        if (r == m3Err_mallocFailed)
            goto oom;
        if (r) {
            res->status = PHASE_INVALID_MODULE;
            set_message(res, "wasm3 cannot compile the module: %s", r);
            goto fail;
        }
    }
    inst->num_globals = inst->module->numGlobals;
    if (inst->num_globals) {
        inst->global_init = malloc(inst->num_globals * sizeof *inst->global_init);
        if (!inst->global_init)
            goto oom;
        for (uint32_t i = 0; i < inst->num_globals; i++)
            inst->global_init[i] = inst->module->globals[i].intValue;
    }
    return inst;
oom:
    res->status = PHASE_CRASHED;
    set_message(res, "the host ran out of memory setting up the job");
fail:
    if (inst)
        instance_free(inst);
    job->runtime = NULL;
    return NULL;
}

/* How reset learns the pages to keep: at an instance's second reset and every PHASE_LEARN_EVERY after
 * (never its first: that is a sandbox worker's only one, and mincore is not in a worker's seccomp
 * policy), for memories up to PHASE_LEARN_MAX_PAGES, mincore lists the resident pages (3 ns a page); at
 * most PHASE_KEPT_RUNS runs and PHASE_KEPT_PAGES pages are kept, else none. Which pages are kept only
 * decides how a page is zeroed, never whether. */
#define PHASE_LEARN_EVERY 64
#define PHASE_LEARN_MAX_PAGES 16384
#define PHASE_KEPT_PAGES 32
#define PHASE_KEPT_GAP 2 /* resident runs this close are kept as one (fewer madvise calls) */

static void learn_kept_pages(phase_instance *inst, uint8_t *first, size_t pages, size_t page)
{
    unsigned char *vec = malloc(pages);
    inst->kept_runs = 0;
    if (!vec)
        return;
    if (mincore(first, pages * page, vec) == 0) {
        uint32_t runs = 0, total = 0;
        size_t p = 0;
        while (p < pages) {
            if (!(vec[p] & 1)) {
                p++;
                continue;
            }
            size_t end = p + 1, last = p;
            while (end < pages && end <= last + PHASE_KEPT_GAP + 1) {
                if (vec[end] & 1)
                    last = end;
                end++;
            }
            end = last + 1;
            total += (uint32_t) (end - p);
            if (runs == PHASE_KEPT_RUNS || total > PHASE_KEPT_PAGES) {
                runs = 0;
                break;
            }
            inst->kept[runs][0] = (uint32_t) p;
            inst->kept[runs][1] = (uint32_t) end;
            runs++;
            p = end;
        }
        inst->kept_runs = runs;
    }
    free(vec);
}

/* Put a used instance back into its just-instantiated state: fresh zero memory of the initial size
 * with the data segments, initial globals, the start function due again. Returns 0 on success.
 * Every page the job could have touched is zeroed: the kept runs by memset (they stay mapped, so the
 * next job does not fault them in: ~4 us a page here), all others by MADV_DONTNEED. */
static int instance_reset(phase_instance *inst, uint32_t max_pages)
{
    IM3Runtime rt = inst->runtime;
    M3Memory *memory = &rt->memory;
    M3MemoryHeader *hdr = memory->mallocated;
    size_t needed = (size_t) max_pages * PHASE_WASM_PAGE + sizeof(M3MemoryHeader);
    if (!hdr || needed > inst->memory_reserved)
        return -1;
    uint8_t *data = (uint8_t *) (hdr + 1);
    size_t used = hdr->length;
    if (used) {
        /* Zero what the last job may have touched: the bytes up to the first page boundary by hand
         * (the header shares that page), the rest by dropping the pages (they come back as zeros). */
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        uintptr_t first = ((uintptr_t) data + page - 1) & ~(uintptr_t) (page - 1);
        size_t head = first - (uintptr_t) data;
        if (head > used)
            head = used;
        memset(data, 0, head);
        if (used > head) {
            uint8_t *base = (uint8_t *) first;
            size_t pages = (used - head + page - 1) / page, done = 0;
            if (pages <= PHASE_LEARN_MAX_PAGES && inst->resets++ % PHASE_LEARN_EVERY == 1)
                learn_kept_pages(inst, base, pages, page);
            for (uint32_t r = 0; r < inst->kept_runs && inst->kept[r][0] < pages; r++) {
                size_t start = inst->kept[r][0], end = inst->kept[r][1] < pages ? inst->kept[r][1] : pages;
                if (start > done && madvise(base + done * page, (start - done) * page, MADV_DONTNEED) != 0)
                    return -1;
                memset(base + start * page, 0, (end - start) * page);
                done = end;
            }
            if (done < pages && madvise(base + done * page, (pages - done) * page, MADV_DONTNEED) != 0)
                return -1;
        }
    }
    uint32_t init_pages = inst->module->memoryInfo.initPages;
    memory->numPages = init_pages;
    memory->maxPages = max_pages;
    inst->module->memoryInfo.maxPages = max_pages;
    hdr->length = (size_t) init_pages * PHASE_WASM_PAGE;
    for (uint32_t i = 0; i < inst->num_globals; i++)
        inst->module->globals[i].intValue = inst->global_init[i];
    if (InitDataSegments(memory, inst->module) != m3Err_none)
        return -1;
    inst->module->startFunction = inst->start_function;
    m3_ResetErrorInfo(rt);
    return 0;
}

static phase_instance *instance_acquire(phase_job *job, uint32_t max_pages)
{
    struct phase_instance_pool *pool = job->spec->module->pool;
    phase_instance *inst = NULL;
    pthread_mutex_lock(&pool->lock);
    if (pool->idle) {
        inst = pool->idle;
        pool->idle = inst->next;
        pool->count--;
    }
    pthread_mutex_unlock(&pool->lock);
    if (inst) {
        inst->next = NULL;
        inst->job = job;
        job->runtime = inst->runtime;
        if (inst->runtime->numStackSlots * sizeof(m3slot_t) == job->spec->limits.stack_bytes
            && instance_reset(inst, max_pages) == 0)
            return inst;
        instance_free(inst);
        job->runtime = NULL;
    }
    return instance_new(job, max_pages);
}

static void instance_release(phase_job *job, phase_instance *inst, int reusable)
{
    struct phase_instance_pool *pool = job->spec->module->pool;
    inst->job = NULL;
    if (reusable) {
        pthread_mutex_lock(&pool->lock);
        if (pool->count < PHASE_POOL_MAX) {
            inst->next = pool->idle;
            pool->idle = inst;
            pool->count++;
            inst = NULL;
        }
        pthread_mutex_unlock(&pool->lock);
    }
    if (inst)
        instance_free(inst);
}

int phase_module_prepare(phase_module *pm, const phase_limits *limits, char *err, size_t errlen)
{
    phase_job_spec spec;
    phase_result res;
    phase_job job;
    memset(&spec, 0, sizeof spec);
    memset(&res, 0, sizeof res);
    memset(&job, 0, sizeof job);
    spec.module = pm;
    spec.limits = *limits;
    job.spec = &spec;
    job.result = &res;
    uint64_t cap_pages = limits->memory_bytes / PHASE_WASM_PAGE;
    if (pm->info.has_memory && pm->info.mem_initial_pages > cap_pages) {
        snprintf(err, errlen, "initial memory is above the limit of %llu bytes", (unsigned long long) limits->memory_bytes);
        return -1;
    }
    phase_instance *inst = instance_new(&job, capped_max_pages(pm, cap_pages));
    if (!inst) {
        snprintf(err, errlen, "%s", res.message);
        return -1;
    }
    M3Result r = m3Err_none;
    const char *why = phase_compile_module(inst->module, pm->info.max_nesting_depth, &r);
    if (why) {
        snprintf(err, errlen, "%s", why);
        instance_free(inst);
        return -1;
    }
    if (r != m3Err_none) {
        snprintf(err, errlen, "wasm3 cannot compile the module: %s", r);
        instance_free(inst);
        return -1;
    }
    instance_release(&job, inst, 1);
    return 0;
}

static void run_entry(phase_job *job, phase_instance *inst)
{
    const phase_job_spec *spec = job->spec;
    phase_result *res = job->result;
    const char *entry = spec->entry ? spec->entry : "_start";
    M3Result r;

    /* Arm every limit: m3_FindFunction compiles and runs the start function. */
    M3MemoryHeader *mem = inst->runtime->memory.mallocated;
    mem->phase_stack_limit = phase_native_stack_limit();
    mem->phase_fuel_countdown = 0;
    job->unlimited_fuel = spec->limits.fuel == 0;
    job->fuel_left = job->unlimited_fuel ? UINT64_MAX / 2 : spec->limits.fuel;
    job->fuel_handed = 0;
    if (spec->limits.timeout_ms)
        job->deadline_ns = job->start_ns + spec->limits.timeout_ms * 1000000ull;

    IM3Function function = NULL;
    if (inst->entry && strcmp(inst->entry_name, entry) == 0 && inst->module->startFunction < 0) {
        function = inst->entry;
    } else {
        r = m3_FindFunction(&function, inst->runtime, entry);
        if (r == m3Err_functionLookupFailed) {
            res->status = PHASE_INVALID_MODULE;
            set_message(res, "the module exports no function named '%s' (phase --entry; a WASI command exports _start)", entry);
            return;
        }
        if (r != m3Err_none) {
            classify(job, r, 0);
            return;
        }
        if (strlen(entry) < sizeof inst->entry_name) {
            inst->entry = function;
            strcpy(inst->entry_name, entry);
        }
    }
    uint32_t nargs = m3_GetArgCount(function), nrets = m3_GetRetCount(function);
    if (nargs != 0 || nrets > 1 || (nrets == 1 && m3_GetRetType(function, 0) != c_m3Type_i32)) {
        res->status = PHASE_INVALID_MODULE;
        set_message(res, "entry '%s' must take no arguments and return nothing or one i32", entry);
        return;
    }
    r = m3_CallV(function);
    int32_t returned = 0;
    if (r == m3Err_none && nrets == 1)
        m3_GetResultsV(function, &returned);
    classify(job, r, returned);
}

int phase_job_run(const phase_job_spec *spec, phase_result *res)
{
    memset(res, 0, sizeof *res);
    phase_job job;
    memset(&job, 0, sizeof job);
    job.spec = spec;
    job.result = res;
    job.start_ns = phase_now_ns();
    job.output_cap = spec->limits.output_bytes;
    atomic_init(&job.interrupt, 0);

    const phase_module *pm = spec->module;
    memcpy(res->module_hash, pm->hash, sizeof res->module_hash);
    if (!spec->unhashed)
        phase_sha256(spec->input, spec->input_len, res->input_hash);
    res->exit_code = -1;

    /* wasm3 0.5.0 holds at most d_m3MaxLinearMemoryPages (2 GiB) whatever the limit says. */
    uint64_t cap_pages = spec->limits.memory_bytes / PHASE_WASM_PAGE;
    if (cap_pages > d_m3MaxLinearMemoryPages)
        cap_pages = d_m3MaxLinearMemoryPages;
    if (pm->info.has_memory && pm->info.mem_initial_pages > cap_pages) {
        res->status = PHASE_MEMORY_LIMIT;
        set_message(res, "the module needs %llu bytes (%llu pages of 64 KiB) of initial memory, above the "
                    "memory limit of %llu bytes: raise the limit (phase --memory, Limits(memory_bytes=...))",
                    (unsigned long long) pm->info.mem_initial_pages * PHASE_WASM_PAGE,
                    (unsigned long long) pm->info.mem_initial_pages,
                    (unsigned long long) (cap_pages * PHASE_WASM_PAGE));
    } else if (phase_fs_open(&job) != 0) {
        /* the result says why */
    } else if (spec->engine == PHASE_ENGINE_WASMTIME) {
        phase_wasmtime_run(&job, classify);
    } else if (spec->engine != PHASE_ENGINE_WASM3) {
        res->status = PHASE_REJECTED;
        set_message(res, "unknown engine %d", (int) spec->engine);
    } else {
        phase_instance *inst = instance_acquire(&job, capped_max_pages(pm, cap_pages));
        if (inst) {
            job.instance = inst;
            run_entry(&job, inst);
            res->fuel_used = phase_job_fuel_used(&job);
            res->memory_peak_bytes = (uint64_t) inst->runtime->memory.numPages * PHASE_WASM_PAGE;
            /* Only a cleanly finished instance is reused; after a trap, limit or compile error start afresh. */
            instance_release(&job, inst, res->status == PHASE_OK);
            job.runtime = NULL;
        }
    }
    phase_fs_close(&job);
    if (res->fs_limit && res->status == PHASE_OK) {
        int bytes = res->fs_limit == PHASE_FS_LIMIT_BYTES;
        res->status = PHASE_OUTPUT_LIMIT;
        set_message(res, "the job tried to keep more than its %s of %llu %s in its writable directories: refused "
                    "with EDQUOT at that call (manifest fs.%s; phase submit %s)",
                    bytes ? "disk_bytes" : "files", (unsigned long long) (bytes ? spec->quota.max_bytes
                                                                                 : spec->quota.max_files),
                    bytes ? "bytes" : "entries", bytes ? "disk_bytes" : "files", bytes ? "--disk" : "--files");
    }
    res->out = job.out[0];
    res->out_len = job.out_len[0];
    res->err = job.out[1];
    res->err_len = job.out_len[1];
    if (!spec->unhashed) {
        phase_sha256(res->out, res->out_len, res->stdout_hash);
        phase_sha256(res->err, res->err_len, res->stderr_hash);
    }
    res->wall_us = (phase_now_ns() - job.start_ns) / 1000;
    return res->status == PHASE_CRASHED ? -1 : 0;
}

void phase_result_clear(phase_result *res)
{
    free(res->out);
    free(res->err);
    res->out = res->err = NULL;
    res->out_len = res->err_len = 0;
}
