/* Spec-testsuite support: long-lived instances, spectest/registered imports, invoke by export name.
 * See phase_spec.h. Test support only: nothing on a node's job path calls this file. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "phase_internal.h"
#include "phase_spec.h"

/* wasm3 internals (non-static in m3_bind.c / m3_compile.c). */
M3Result LinkRawFunction(IM3Module io_module, IM3Function io_function, const char *signature,
                         const void *i_function, const void *i_userdata);
M3Result CompileFunction(IM3Function io_function);

#define SPEC_MEMORY_CAP_PAGES 65536u          /* 4 GiB: reserved lazily by phase_memory_resize */

struct phase_spec_instance {
    phase_instance inst;          /* runtime->userdata points here: the hooks expect it */
    phase_job job;
    phase_job_spec spec;
    phase_result result;          /* job->result: the hooks never write it, but keep it valid */
    uint8_t *bytes;               /* wasm3 compiles lazily from these: kept until the runtime is freed */
    uint64_t call_timeout_ms;
    int active;                   /* > 0 while a call runs in this runtime (re-entry would reuse its stack) */
};

static void msg(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msg(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char type_letter(u8 t)
{
    switch (t) {
    case c_m3Type_i32: return 'i';
    case c_m3Type_i64: return 'I';
    case c_m3Type_f32: return 'f';
    case c_m3Type_f64: return 'F';
    default: return '?';
    }
}

/* Signature in the validator's notation: results ('v' if none), then "(params)". */
static void functype_sig(IM3FuncType ft, char *out, size_t outlen)
{
    size_t k = 0;
    if (outlen < (size_t) ft->numRets + ft->numArgs + 4) {
        if (outlen)
            out[0] = 0;
        return;
    }
    if (ft->numRets == 0)
        out[k++] = 'v';
    for (u32 i = 0; i < ft->numRets; i++)
        out[k++] = type_letter(ft->types[i]);
    out[k++] = '(';
    for (u32 i = 0; i < ft->numArgs; i++)
        out[k++] = type_letter(ft->types[ft->numRets + i]);
    out[k++] = ')';
    out[k] = 0;
}


/* Arm the hooks' state before anything may run wasm code (start function, an invocation). */
static void arm(phase_spec_instance *si)
{
    M3MemoryHeader *mem = si->inst.runtime->memory.mallocated;
    if (mem) {
        mem->phase_stack_limit = phase_native_stack_limit();   /* the job executor's rule */
        mem->phase_fuel_countdown = 0;
    }
    phase_job *job = &si->job;
    job->unlimited_fuel = 1;
    job->fuel_left = UINT64_MAX / 2;
    job->fuel_handed = 0;
    job->grow_refused = 0;
    job->start_ns = phase_now_ns();
    job->deadline_ns = si->call_timeout_ms ? job->start_ns + si->call_timeout_ms * 1000000ull : 0;
}

/* ---- imports ------------------------------------------------------------------------------ */

static const struct { const char *name, *sig; } spectest_funcs[] = {
    {"print", "v()"},        {"print_i32", "v(i)"},     {"print_i64", "v(I)"},      {"print_f32", "v(f)"},
    {"print_f64", "v(F)"},   {"print_i32_f32", "v(if)"}, {"print_f64_f64", "v(FF)"},
};

static int bytes_eq(const char *a, size_t alen, const char *b)
{
    return b && strlen(b) == alen && memcmp(a, b, alen) == 0;
}

/* The function a registered instance exports under name, or NULL. Imported functions re-exported
 * count too (they are linked, so calling them works). */
static IM3Function export_function(IM3Module module, const char *name, size_t name_len)
{
    if (memchr(name, 0, name_len))
        return NULL;    /* wasm3 keeps export names as C strings */
    for (u32 i = 0; i < module->numFunctions; i++) {
        IM3Function f = &module->functions[i];
        /* wasm3 puts an imported function's field name in names[0]: that is not an export name */
        u16 first = (f->import.moduleUtf8 || f->import.fieldUtf8) ? 1 : 0;
        for (u16 j = first; j < f->numNames; j++)
            if (bytes_eq(name, name_len, f->names[j]))
                return f;
    }
    return NULL;
}

typedef struct import_ctx {
    const phase_spec_registry *registry;
} import_ctx;

static phase_spec_instance *registered(const phase_spec_registry *reg, const char *module, size_t module_len)
{
    if (!reg)
        return NULL;
    /* the latest registration of a name wins */
    for (uint32_t i = reg->count; i-- > 0;)
        if (bytes_eq(module, module_len, reg->names[i]))
            return reg->instances[i];
    return NULL;
}

static int check_import(void *vctx, const char *module, size_t module_len, const char *name, size_t name_len,
                        const char *signature, char *err, size_t errlen)
{
    import_ctx *ctx = vctx;
    if (bytes_eq(module, module_len, "spectest")) {
        for (size_t i = 0; i < sizeof spectest_funcs / sizeof spectest_funcs[0]; i++)
            if (bytes_eq(name, name_len, spectest_funcs[i].name)) {
                if (strcmp(signature, spectest_funcs[i].sig) == 0)
                    return 0;
                msg(err, errlen, "incompatible import type: spectest.%s is %s", spectest_funcs[i].name,
                    spectest_funcs[i].sig);
                return -1;
            }
        msg(err, errlen, "unknown import: spectest provides no function of that name");
        return -1;
    }
    phase_spec_instance *src = registered(ctx->registry, module, module_len);
    if (!src) {
        msg(err, errlen, "unknown import: no module registered under that name");
        return -1;
    }
    IM3Function f = export_function(src->inst.module, name, name_len);
    if (!f) {
        msg(err, errlen, "unknown import: the registered module exports no function of that name");
        return -1;
    }
    char sig[600];
    functype_sig(f->funcType, sig, sizeof sig);
    if (strcmp(sig, signature) != 0) {
        msg(err, errlen, "incompatible import type: the export is %s", sig);
        return -1;
    }
    return 0;
}

static m3ApiRawFunction(spectest_print)
{
    (void) runtime; (void) _ctx; (void) _sp; (void) _mem;
    return m3Err_none;
}

static M3Result call_function(phase_spec_instance *si, IM3Function f, const uint64_t *args, uint32_t nargs);

/* An import bound to another instance's export: run it there, copy the results back. */
static m3ApiRawFunction(cross_call)
{
    (void) runtime; (void) _mem;
    IM3Function target = (IM3Function) _ctx->userdata;
    phase_spec_instance *dst = (phase_spec_instance *) target->module->runtime->userdata;
    IM3FuncType ft = target->funcType;
    M3Result r = call_function(dst, target, _sp + ft->numRets, ft->numArgs);
    if (r)
        return r;
    memcpy(_sp, dst->inst.runtime->stack, (size_t) ft->numRets * sizeof(uint64_t));
    return m3Err_none;
}

static const char trap_reentry[] = "[trap] re-entrant call into an instance already running (unsupported here)";

/* Call f in its own runtime with raw 64-bit argument slots; results are left in runtime->stack. */
static M3Result call_function(phase_spec_instance *si, IM3Function f, const uint64_t *args, uint32_t nargs)
{
    if (si->active)
        return trap_reentry;    /* wasm3 would start again at the bottom of the live stack */
    IM3FuncType ft = f->funcType;
    if (nargs != ft->numArgs)
        return m3Err_argumentCountMismatch;
    if (!f->compiled) {
        M3Result r = CompileFunction(f);
        if (r)
            return r;
    }
    const void *ptrs[nargs ? nargs : 1];
    for (uint32_t i = 0; i < nargs; i++)
        ptrs[i] = &args[i];     /* i32/f32 in the low half: little-endian */
    arm(si);
    si->active++;
    M3Result r = m3_Call(f, nargs, ptrs);
    si->active--;
    return r;
}

static phase_spec_status link_imports(phase_spec_instance *si, const phase_spec_registry *reg, char *err,
                                      size_t errlen)
{
    IM3Module module = si->inst.module;
    for (u32 i = 0; i < module->numFunctions; i++) {
        IM3Function f = &module->functions[i];
        if (!f->import.moduleUtf8 || !f->import.fieldUtf8)
            continue;
        const char *mod = f->import.moduleUtf8, *name = f->import.fieldUtf8;
        M3Result r;
        if (strcmp(mod, "spectest") == 0) {
            r = LinkRawFunction(module, f, NULL, (const void *) spectest_print, NULL);
        } else {
            phase_spec_instance *src = registered(reg, mod, strlen(mod));
            IM3Function target = src ? export_function(src->inst.module, name, strlen(name)) : NULL;
            if (!target) {
                msg(err, errlen, "unknown import \"%s\".\"%s\"", mod, name);
                return PHASE_SPEC_UNLINKABLE;
            }
            r = LinkRawFunction(module, f, NULL, (const void *) cross_call, target);
        }
        if (r) {
            msg(err, errlen, "linking \"%s\".\"%s\": %s", mod, name, r);
            return PHASE_SPEC_ERROR;
        }
    }
    return PHASE_SPEC_OK;
}

/* ---- instances ---------------------------------------------------------------------------- */

void phase_spec_free(phase_spec_instance *si)
{
    if (!si)
        return;
    if (si->inst.runtime)
        m3_FreeRuntime(si->inst.runtime);   /* frees a loaded module and the linear memory (via our hook) */
    else if (si->inst.module)
        m3_FreeModule(si->inst.module);
    if (si->inst.env)
        m3_FreeEnvironment(si->inst.env);
    free(si->bytes);
    free(si);
}

static int any_function_import(void *vctx, const char *module, size_t module_len, const char *name, size_t name_len,
                               const char *signature, char *err, size_t errlen)
{
    (void) vctx, (void) module, (void) module_len, (void) name, (void) name_len, (void) signature, (void) err;
    (void) errlen;
    return 0;
}

static phase_spec_status validation_status(const char *verr)
{
    if (strstr(verr, "unsupported: "))
        return PHASE_SPEC_UNSUPPORTED;
    if (strstr(verr, "unknown import") || strstr(verr, "incompatible import type"))
        return PHASE_SPEC_UNLINKABLE;
    return PHASE_SPEC_INVALID;
}

phase_spec_status phase_spec_validate(const uint8_t *bytes, size_t len, char *err, size_t errlen)
{
    char verr[512] = "";
    phase_wasm_info info;
    memset(&info, 0, sizeof info);
    if (phase_wasm_validate(bytes, len, NULL, any_function_import, NULL, &info, verr, sizeof verr) == 0)
        return PHASE_SPEC_OK;
    msg(err, errlen, "%s", verr);
    return validation_status(verr);
}

phase_spec_status phase_spec_instantiate(const uint8_t *bytes, size_t len, const phase_spec_registry *registry,
                                         uint32_t stack_bytes, phase_spec_instance **out, char *err, size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    char verr[512] = "";
    import_ctx ictx = {registry};
    phase_wasm_info info;
    memset(&info, 0, sizeof info);
    if (phase_wasm_validate(bytes, len, NULL, check_import, &ictx, &info, verr, sizeof verr) != 0) {
        msg(err, errlen, "%s", verr);
        return validation_status(verr);
    }

    phase_spec_instance *si = calloc(1, sizeof *si);
    if (!si) {
        msg(err, errlen, "out of memory");
        return PHASE_SPEC_ERROR;
    }
    si->bytes = malloc(len ? len : 1);
    if (!si->bytes)
        goto oom;
    memcpy(si->bytes, bytes, len);
    si->call_timeout_ms = 20000;
    phase_limits_default(&si->spec.limits);
    si->spec.limits.timeout_ms = 0;   /* calls are bounded by call_timeout_ms instead */
    si->spec.limits.memory_bytes = (uint64_t) SPEC_MEMORY_CAP_PAGES * PHASE_WASM_PAGE;
    si->spec.limits.fuel = 0;
    si->spec.limits.stack_bytes = stack_bytes ? stack_bytes : 512u << 10;
    si->job.spec = &si->spec;
    si->job.result = &si->result;
    si->job.instance = &si->inst;
    si->job.output_cap = si->spec.limits.output_bytes;
    atomic_init(&si->job.interrupt, 0);
    si->inst.job = &si->job;

    si->inst.env = m3_NewEnvironment();
    if (!si->inst.env)
        goto oom;
    si->inst.runtime = m3_NewRuntime(si->inst.env, si->spec.limits.stack_bytes, &si->inst);
    if (!si->inst.runtime)
        goto oom;
    si->job.runtime = si->inst.runtime;

    M3Result r = m3_ParseModule(si->inst.env, &si->inst.module, si->bytes, (uint32_t) len);
    if (r) {
        msg(err, errlen, "wasm3 cannot parse the module: %s", r);
        si->inst.module = NULL;
        phase_spec_free(si);
        return PHASE_SPEC_ERROR;
    }
    /* As the job executor does: wasm3's own memoryLimit truncates silently, so cap maxPages. */
    uint32_t max_pages = 0;
    if (info.has_memory)
        max_pages = info.mem_has_max && info.mem_max_pages < SPEC_MEMORY_CAP_PAGES ? info.mem_max_pages
                                                                                 : SPEC_MEMORY_CAP_PAGES;
    si->inst.module->memoryInfo.maxPages = max_pages;
    if (phase_table_presize(si->inst.module, &info) != 0) {
        m3_FreeModule(si->inst.module);
        si->inst.module = NULL;
        goto oom;
    }
    si->inst.start_function = si->inst.module->startFunction;
    r = m3_LoadModule(si->inst.runtime, si->inst.module);
    if (r) {
        /* data segment out of bounds, table overflow: instantiation fails (the runtime did not take the module) */
        IM3Module m = si->inst.module;
        si->inst.module = NULL;
        m3_FreeModule(m);
        msg(err, errlen, "%s", r);
        phase_spec_free(si);
        return r == m3Err_mallocFailed ? PHASE_SPEC_ERROR : PHASE_SPEC_TRAP;
    }
    phase_spec_status st = link_imports(si, registry, err, errlen);
    if (st != PHASE_SPEC_OK) {
        phase_spec_free(si);
        return st;
    }
    si->inst.num_globals = si->inst.module->numGlobals;
    if (si->inst.module->startFunction >= 0) {
        arm(si);
        si->active++;
        r = m3_RunStart(si->inst.module);
        si->active--;
        if (r) {
            msg(err, errlen, "start function: %s", r);
            phase_spec_free(si);
            return strncmp(r, "[trap]", 6) == 0 ? PHASE_SPEC_TRAP : PHASE_SPEC_ERROR;
        }
    }
    *out = si;
    return PHASE_SPEC_OK;
oom:
    msg(err, errlen, "out of memory");
    phase_spec_free(si);
    return PHASE_SPEC_ERROR;
}

void phase_spec_set_call_timeout_ms(phase_spec_instance *si, uint64_t ms)
{
    si->call_timeout_ms = ms;
}

int phase_spec_export_signature(phase_spec_instance *si, const char *name, size_t name_len, char *sig, size_t siglen)
{
    IM3Function f = export_function(si->inst.module, name, name_len);
    if (!f)
        return -1;
    functype_sig(f->funcType, sig, siglen);
    return 0;
}

int phase_spec_invoke(phase_spec_instance *si, const char *name, size_t name_len, const uint64_t *args,
                      const char *arg_types, uint32_t nargs, uint64_t *results, char *result_types,
                      uint32_t results_cap, uint32_t *nresults, char *err, size_t errlen)
{
    *nresults = 0;
    if (err && errlen)
        err[0] = 0;
    IM3Function f = export_function(si->inst.module, name, name_len);
    if (!f) {
        msg(err, errlen, memchr(name, 0, name_len) ? "export name holds a NUL byte (wasm3 keeps C strings)"
                                                   : "no exported function of that name (wasm3 keeps %d names per "
                                                     "function)", d_m3MaxDuplicateFunctionImpl);
        return -1;
    }
    IM3FuncType ft = f->funcType;
    if (nargs != ft->numArgs) {
        msg(err, errlen, "the export takes %u arguments, %u given", ft->numArgs, nargs);
        return -1;
    }
    for (uint32_t i = 0; i < nargs; i++)
        if (arg_types && arg_types[i] != type_letter(ft->types[ft->numRets + i])) {
            msg(err, errlen, "argument %u: the export expects '%c', '%c' given", i,
                type_letter(ft->types[ft->numRets + i]), arg_types[i]);
            return -1;
        }
    if (ft->numRets > results_cap) {
        msg(err, errlen, "the export returns %u values, room for %u", ft->numRets, results_cap);
        return -1;
    }
    /* Normalise 32-bit arguments: the slot's high half must not matter, but keep it clean anyway. */
    uint64_t slots[nargs ? nargs : 1];
    for (uint32_t i = 0; i < nargs; i++) {
        u8 t = ft->types[ft->numRets + i];
        slots[i] = (t == c_m3Type_i32 || t == c_m3Type_f32) ? (args[i] & 0xffffffffu) : args[i];
    }
    M3Result r = call_function(si, f, slots, nargs);
    if (r) {
        msg(err, errlen, "%s", r);
        return strncmp(r, "[trap]", 6) == 0 ? 1 : -1;
    }
    const uint64_t *s = (const uint64_t *) si->inst.runtime->stack;
    for (uint32_t i = 0; i < ft->numRets; i++) {
        u8 t = ft->types[i];
        results[i] = (t == c_m3Type_i32 || t == c_m3Type_f32) ? (s[i] & 0xffffffffu) : s[i];
        result_types[i] = type_letter(t);
    }
    *nresults = ft->numRets;
    return 0;
}

int phase_spec_get_global(phase_spec_instance *si, const char *name, size_t name_len, uint64_t *bits, char *type,
                          char *err, size_t errlen)
{
    IM3Module module = si->inst.module;
    if (!memchr(name, 0, name_len))
        for (u32 i = 0; i < module->numGlobals; i++) {
            IM3Global g = &module->globals[i];
            if (!bytes_eq(name, name_len, g->name))
                continue;
            M3TaggedValue v;
            M3Result r = m3_GetGlobal(g, &v);
            if (r) {
                msg(err, errlen, "%s", r);
                return -1;
            }
            switch (v.type) {
            case c_m3Type_i32: *bits = (uint32_t) v.value.i32; break;
            case c_m3Type_i64: *bits = (uint64_t) v.value.i64; break;
            case c_m3Type_f32: { uint32_t b; memcpy(&b, &v.value.f32, 4); *bits = b; break; }
            case c_m3Type_f64: memcpy(bits, &v.value.f64, 8); break;
            default: msg(err, errlen, "global of unknown type"); return -1;
            }
            *type = type_letter((u8) v.type);
            return 0;
        }
    msg(err, errlen, "no exported global of that name (wasm3 keeps one export name per global)");
    return -1;
}
