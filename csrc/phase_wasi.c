/* Phase's WASI preview1 host layer: the function table, and what is not the file system.
 *
 * Args, environment, stdin from the job input, stdout and stderr into bounded buffers,
 * clocks, random, exit, poll. Descriptors 3 and up (preopened directories and what is
 * opened beneath them) are phase_wasi_fs.c's. No sockets and no proc_raise: those link to
 * stubs; any other import is refused at validation, naming it.
 *
 * Every guest pointer is checked in 64-bit arithmetic against the current memory size
 * before use, and no pointer into linear memory is kept across calls.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "phase_wasi.h"

M3Result const phase_trap_output_limit = "[trap] output limit exceeded";

enum { WASI_CLOCK_REALTIME = 0, WASI_CLOCK_MONOTONIC = 1, WASI_CLOCK_PROCESS_CPUTIME = 2, WASI_CLOCK_THREAD_CPUTIME = 3 };

#define PHASE_DET_NS_PER_TICK 1000ull

/* argv/environ share one shape: a list of NUL-terminated strings. */
static uint32_t strings_sizes(const char *const *list, uint32_t count, uint64_t *bytes)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++)
        total += strlen(list[i]) + 1;
    *bytes = total;
    return count;
}

static uint32_t strings_get(IM3Runtime runtime, void *_mem, const char *const *list, uint32_t count,
                            uint32_t ptrs, uint32_t buf)
{
    uint64_t bytes;
    strings_sizes(list, count, &bytes);
    uint8_t *p = guest(runtime, _mem, ptrs, (uint64_t) count * 4);
    uint8_t *b = guest(runtime, _mem, buf, bytes);
    if (!p || !b)
        return WASI_EFAULT;
    uint32_t offset = buf;
    for (uint32_t i = 0; i < count; i++) {
        size_t n = strlen(list[i]) + 1;
        wr32(p + 4 * i, offset);
        memcpy(b, list[i], n);
        b += n;
        offset += (uint32_t) n;
    }
    return WASI_ESUCCESS;
}

static uint32_t strings_sizes_put(IM3Runtime runtime, void *_mem, const char *const *list, uint32_t count,
                                  uint32_t count_ptr, uint32_t size_ptr)
{
    uint64_t bytes;
    strings_sizes(list, count, &bytes);
    uint8_t *c = guest(runtime, _mem, count_ptr, 4);
    uint8_t *s = guest(runtime, _mem, size_ptr, 4);
    if (!c || !s)
        return WASI_EFAULT;
    wr32(c, count);
    wr32(s, (uint32_t) bytes);
    return WASI_ESUCCESS;
}

static m3ApiRawFunction(wasi_args_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, argv);
    m3ApiGetArg(uint32_t, buf);
    const phase_job_spec *spec = JOB()->spec;
    m3ApiReturn(strings_get(runtime, _mem, spec->argv, spec->argc, argv, buf));
}

static m3ApiRawFunction(wasi_args_sizes_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, count_ptr);
    m3ApiGetArg(uint32_t, size_ptr);
    const phase_job_spec *spec = JOB()->spec;
    m3ApiReturn(strings_sizes_put(runtime, _mem, spec->argv, spec->argc, count_ptr, size_ptr));
}

static m3ApiRawFunction(wasi_environ_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, envp);
    m3ApiGetArg(uint32_t, buf);
    const phase_job_spec *spec = JOB()->spec;
    m3ApiReturn(strings_get(runtime, _mem, spec->envp, spec->envc, envp, buf));
}

static m3ApiRawFunction(wasi_environ_sizes_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, count_ptr);
    m3ApiGetArg(uint32_t, size_ptr);
    const phase_job_spec *spec = JOB()->spec;
    m3ApiReturn(strings_sizes_put(runtime, _mem, spec->envp, spec->envc, count_ptr, size_ptr));
}

static m3ApiRawFunction(wasi_fd_read)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    m3ApiGetArg(uint32_t, iovs);
    m3ApiGetArg(uint32_t, iovs_len);
    m3ApiGetArg(uint32_t, nread_ptr);
    phase_job *job = JOB();
    int stream = phase_fs_stream(job, fd);
    if (stream != 0)
        m3ApiReturn(stream < 0 && fd > 2 ? phase_fs_read(runtime, _mem, fd, iovs, iovs_len, nread_ptr) : WASI_EBADF);
    uint8_t *vec = guest(runtime, _mem, iovs, (uint64_t) iovs_len * 8);
    uint8_t *nread = guest(runtime, _mem, nread_ptr, 4);
    if (!vec || !nread)
        m3ApiReturn(WASI_EFAULT);
    uint64_t total = 0;
    for (uint32_t i = 0; i < iovs_len; i++) {
        uint32_t buf = rd32(vec + 8 * i), len = rd32(vec + 8 * i + 4);
        uint8_t *dst = guest(runtime, _mem, buf, len);
        if (!dst)
            m3ApiReturn(WASI_EFAULT);
        size_t left = job->spec->input_len - job->input_pos;
        size_t n = len < left ? len : left;
        memcpy(dst, job->spec->input + job->input_pos, n);
        job->input_pos += n;
        total += n;
        if (n < len)
            break;
    }
    wr32(nread, (uint32_t) total);
    charge(runtime, total);
    m3ApiReturn(WASI_ESUCCESS);
}

enum { APPENDED = 0, OVER_LIMIT = 1, SINK_GONE = 2 };

/* Append to stdout (stream 0) or stderr (stream 1), up to the shared cap, and hand what is kept to the job's
 * output sink if it has one. */
static int output_append(phase_job *job, int stream, const uint8_t *src, size_t len)
{
    uint64_t used = job->out_len[0] + job->out_len[1];
    size_t room = used >= job->output_cap ? 0 : (size_t) (job->output_cap - used);
    size_t take = len < room ? len : room;
    if (take) {
        size_t need = job->out_len[stream] + take;
        if (need > job->out_alloc[stream]) {
            size_t alloc = job->out_alloc[stream] ? job->out_alloc[stream] : 4096;
            while (alloc < need)
                alloc *= 2;
            if (alloc > job->output_cap)
                alloc = (size_t) job->output_cap;
            uint8_t *grown = realloc(job->out[stream], alloc);
            if (!grown)
                return OVER_LIMIT;
            job->out[stream] = grown;
            job->out_alloc[stream] = alloc;
        }
        const phase_job_spec *spec = job->spec;
        if (spec->output_sink && spec->output_sink(spec->output_ctx, stream + 1, src, take) != 0)
            return SINK_GONE;
        memcpy(job->out[stream] + job->out_len[stream], src, take);
        job->out_len[stream] += take;
    }
    return take == len ? APPENDED : OVER_LIMIT;
}

static m3ApiRawFunction(wasi_fd_write)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    m3ApiGetArg(uint32_t, iovs);
    m3ApiGetArg(uint32_t, iovs_len);
    m3ApiGetArg(uint32_t, nwritten_ptr);
    phase_job *job = JOB();
    int stream = phase_fs_stream(job, fd);
    if (stream != 1 && stream != 2)
        m3ApiReturn(stream < 0 && fd > 2 ? phase_fs_write(runtime, _mem, fd, iovs, iovs_len, nwritten_ptr)
                                         : WASI_EBADF);
    uint8_t *vec = guest(runtime, _mem, iovs, (uint64_t) iovs_len * 8);
    uint8_t *nwritten = guest(runtime, _mem, nwritten_ptr, 4);
    if (!vec || !nwritten)
        m3ApiReturn(WASI_EFAULT);
    uint64_t total = 0;
    for (uint32_t i = 0; i < iovs_len; i++) {
        uint32_t buf = rd32(vec + 8 * i), len = rd32(vec + 8 * i + 4);
        const uint8_t *src = guest(runtime, _mem, buf, len);
        if (!src)
            m3ApiReturn(WASI_EFAULT);
        int appended = output_append(job, stream - 1, src, len);
        if (appended == SINK_GONE) {
            if (total)
                break;
            m3ApiReturn(WASI_EPIPE);
        }
        if (appended == OVER_LIMIT) {
            job->output_exceeded = 1;
            m3ApiTrap(phase_trap_output_limit);
        }
        total += len;
    }
    wr32(nwritten, (uint32_t) total);
    charge(runtime, total);
    m3ApiReturn(WASI_ESUCCESS);
}

static m3ApiRawFunction(wasi_fd_fdstat_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    m3ApiGetArg(uint32_t, stat_ptr);
    int stream = phase_fs_stream(JOB(), fd);
    if (stream < 0)
        m3ApiReturn(fd > 2 ? phase_fs_fdstat_get(runtime, _mem, fd, stat_ptr) : WASI_EBADF);
    uint8_t *st = guest(runtime, _mem, stat_ptr, 24);
    if (!st)
        m3ApiReturn(WASI_EFAULT);
    /* filetype unknown (a pipe, not a tty: libc buffers fully); rights: fd_read (1<<1) or fd_write (1<<6),
     * plus poll_fd_readwrite (1<<27). */
    uint64_t rights = (stream == 0 ? (1ull << 1) : (1ull << 6)) | (1ull << 27);
    memset(st, 0, 24);
    st[0] = 0;
    wr16(st + 2, 0);
    wr64(st + 8, rights);
    wr64(st + 16, 0);
    m3ApiReturn(WASI_ESUCCESS);
}

static m3ApiRawFunction(wasi_fd_prestat_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    m3ApiGetArg(uint32_t, ptr);
    m3ApiReturn(phase_fs_prestat_get(runtime, _mem, fd, ptr));
}

static m3ApiRawFunction(wasi_fd_prestat_dir_name)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    m3ApiGetArg(uint32_t, path);
    m3ApiGetArg(uint32_t, len);
    m3ApiReturn(phase_fs_prestat_dir_name(runtime, _mem, fd, path, len));
}

static m3ApiRawFunction(wasi_fd_close)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    (void) _mem;
    m3ApiReturn(phase_fs_fd_close(JOB(), fd));
}

static m3ApiRawFunction(wasi_fd_seek)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    m3ApiGetArg(int64_t, offset);
    m3ApiGetArg(uint32_t, whence);
    m3ApiGetArg(uint32_t, result_ptr);
    int stream = phase_fs_stream(JOB(), fd);
    m3ApiReturn(stream >= 0 ? WASI_ESPIPE : phase_fs_seek(runtime, _mem, fd, offset, whence, result_ptr));
}

static uint64_t deterministic_time(phase_job *job)
{
    /* Strictly increasing and a function of the job alone: the fuel used so far plus a call count. */
    return phase_job_fuel_used(job) * PHASE_DET_NS_PER_TICK + ++job->det_clock_calls;
}

static int clock_read(phase_job *job, uint32_t id, uint64_t *out)
{
    struct timespec ts;
    clockid_t cid;
    switch (id) {
    case WASI_CLOCK_REALTIME: cid = CLOCK_REALTIME; break;
    case WASI_CLOCK_MONOTONIC: cid = CLOCK_MONOTONIC; break;
    case WASI_CLOCK_PROCESS_CPUTIME: cid = CLOCK_PROCESS_CPUTIME_ID; break;
    case WASI_CLOCK_THREAD_CPUTIME: cid = CLOCK_THREAD_CPUTIME_ID; break;
    default: return WASI_EINVAL;
    }
    if (job->spec->deterministic) {
        uint64_t t = deterministic_time(job);
        *out = id == WASI_CLOCK_REALTIME ? PHASE_DET_EPOCH_NS + t : t;
        return WASI_ESUCCESS;
    }
    if (clock_gettime(cid, &ts) != 0)
        return WASI_ENOTSUP;
    *out = (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
    return WASI_ESUCCESS;
}

static m3ApiRawFunction(wasi_clock_time_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, id);
    m3ApiGetArg(uint64_t, precision);
    m3ApiGetArg(uint32_t, time_ptr);
    (void) precision;
    uint8_t *dst = guest(runtime, _mem, time_ptr, 8);
    if (!dst)
        m3ApiReturn(WASI_EFAULT);
    uint64_t t;
    uint32_t rc = (uint32_t) clock_read(JOB(), id, &t);
    if (rc == WASI_ESUCCESS)
        wr64(dst, t);
    m3ApiReturn(rc);
}

static m3ApiRawFunction(wasi_clock_res_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, id);
    m3ApiGetArg(uint32_t, res_ptr);
    if (id > WASI_CLOCK_THREAD_CPUTIME)
        m3ApiReturn(WASI_EINVAL);
    uint8_t *dst = guest(runtime, _mem, res_ptr, 8);
    if (!dst)
        m3ApiReturn(WASI_EFAULT);
    wr64(dst, JOB()->spec->deterministic ? 1 : 1000);
    m3ApiReturn(WASI_ESUCCESS);
}

static m3ApiRawFunction(wasi_random_get)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, buf);
    m3ApiGetArg(uint32_t, len);
    phase_job *job = JOB();
    uint8_t *dst = guest(runtime, _mem, buf, len);
    if (!dst)
        m3ApiReturn(WASI_EFAULT);
    if (job->spec->deterministic) {
        /* Each call draws from its own ChaCha20 stream keyed by sha256(seed || call number). */
        uint8_t material[40], key[randombytes_SEEDBYTES];
        memcpy(material, job->spec->seed, 32);
        uint64_t n = job->det_random_calls++;
        memcpy(material + 32, &n, 8);
        phase_sha256(material, sizeof material, key);
        randombytes_buf_deterministic(dst, len, key);
    } else {
        randombytes_buf(dst, len);
    }
    charge(runtime, len);
    m3ApiReturn(WASI_ESUCCESS);
}

static m3ApiRawFunction(wasi_proc_exit)
{
    m3ApiGetArg(uint32_t, code);
    phase_job *job = JOB();
    job->exited = 1;
    job->exit_code = (int32_t) code;
    m3ApiTrap(m3Err_trapExit);
}

static m3ApiRawFunction(wasi_sched_yield)
{
    m3ApiReturnType(uint32_t);
    m3ApiReturn(WASI_ESUCCESS);
}

/* poll_oneoff: fd subscriptions on stdio are always ready; clock subscriptions sleep (real
 * mode, never past the job's deadline) or advance nothing (deterministic mode) and fire. */
static m3ApiRawFunction(wasi_poll_oneoff)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, in_ptr);
    m3ApiGetArg(uint32_t, out_ptr);
    m3ApiGetArg(uint32_t, nsubs);
    m3ApiGetArg(uint32_t, nevents_ptr);
    phase_job *job = JOB();
    if (nsubs == 0)
        m3ApiReturn(WASI_EINVAL);
    uint8_t *in = guest(runtime, _mem, in_ptr, (uint64_t) nsubs * 48);
    uint8_t *out = guest(runtime, _mem, out_ptr, (uint64_t) nsubs * 32);
    uint8_t *nevents = guest(runtime, _mem, nevents_ptr, 4);
    if (!in || !out || !nevents)
        m3ApiReturn(WASI_EFAULT);

    int any_fd = 0;
    uint64_t earliest = UINT64_MAX;
    for (uint32_t i = 0; i < nsubs; i++) {
        uint8_t tag = in[48 * i + 8];
        if (tag == 0) {
            uint64_t timeout = rd64(in + 48 * i + 24);
            uint16_t flags;
            memcpy(&flags, in + 48 * i + 40, 2);
            uint64_t now = 0;
            if (flags & 1) {   /* absolute time on the given clock */
                if (clock_read(job, rd32(in + 48 * i + 16), &now) != WASI_ESUCCESS)
                    now = 0;
                timeout = timeout > now ? timeout - now : 0;
            }
            if (timeout < earliest)
                earliest = timeout;
        } else {
            any_fd = 1;
        }
    }
    if (!any_fd && earliest != UINT64_MAX && earliest > 0 && !job->spec->deterministic) {
        uint64_t now = phase_now_ns();
        uint64_t until = now + earliest;
        if (job->deadline_ns && until >= job->deadline_ns)
            until = job->deadline_ns;
        struct timespec ts;
        ts.tv_sec = (time_t) (until / 1000000000ull);
        ts.tv_nsec = (long) (until % 1000000000ull);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        if (job->deadline_ns && phase_now_ns() >= job->deadline_ns)
            m3ApiTrap(phase_trap_timeout);
    }

    /* Re-validate: memory cannot move here, but keep to the rule of no pointer across a call. */
    in = guest(runtime, _mem, in_ptr, (uint64_t) nsubs * 48);
    out = guest(runtime, _mem, out_ptr, (uint64_t) nsubs * 32);
    if (!in || !out)
        m3ApiReturn(WASI_EFAULT);
    uint32_t n = 0;
    for (uint32_t i = 0; i < nsubs; i++) {
        const uint8_t *sub = in + 48 * i;
        uint8_t tag = sub[8];
        uint8_t *ev = out + 32 * n;
        if (tag == 0) {
            if (any_fd)
                continue;
        } else if (tag != 1 && tag != 2) {
            continue;
        }
        memset(ev, 0, 32);
        memcpy(ev, sub, 8);            /* userdata */
        ev[10] = tag;
        if (tag != 0) {
            uint32_t fd = rd32(sub + 16);
            uint16_t error = 0;
            uint64_t nbytes = 0;
            int stream = phase_fs_stream(job, fd);
            if (stream < 0)
                error = (uint16_t) phase_fs_poll_ready(job, fd);
            else if ((tag == 1 && stream != 0) || (tag == 2 && stream == 0))
                error = WASI_EBADF;
            else if (tag == 1 && stream == 0)
                nbytes = job->spec->input_len - job->input_pos;
            wr16(ev + 8, error);
            wr64(ev + 16, nbytes);
            if (tag == 1 && nbytes == 0)
                wr16(ev + 24, 1);      /* hangup: end of input */
        }
        n++;
    }
    wr32(nevents, n);
    m3ApiReturn(WASI_ESUCCESS);
}

/* Sockets and proc_raise, which a job never has: these exist so that ordinary libc programs link. */
enum stub_kind { STUB_SOCK, STUB_NOSYS };

static m3ApiRawFunction(wasi_stub)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    (void) _mem;
    (void) runtime;
    switch ((enum stub_kind) (uintptr_t) _ctx->userdata) {
    case STUB_SOCK: m3ApiReturn(fd <= 2 ? WASI_ENOTSOCK : WASI_EBADF);
    default: m3ApiReturn(WASI_ENOSYS);
    }
}

static m3ApiRawFunction(wasi_fd_tell)
{
    m3ApiReturnType(uint32_t);
    m3ApiGetArg(uint32_t, fd);
    m3ApiGetArg(uint32_t, ptr);
    int stream = phase_fs_stream(JOB(), fd);
    m3ApiReturn(stream >= 0 ? WASI_ESPIPE : phase_fs_tell(runtime, _mem, fd, ptr));
}

typedef struct wasi_binding {
    phase_wasi_function f;
    M3RawCall call;
    enum stub_kind kind;   /* for wasi_stub */
} wasi_binding;

#define IMPL(name, sig) {{#name, sig, 1}, wasi_##name, STUB_NOSYS}
#define FS(name, sig) {{#name, sig, 1}, phase_fs_##name, STUB_NOSYS}
#define STUB(name, sig, kind) {{#name, sig, 0}, wasi_stub, kind}

static const wasi_binding bindings[] = {
    IMPL(args_get, "i(ii)"),
    IMPL(args_sizes_get, "i(ii)"),
    IMPL(environ_get, "i(ii)"),
    IMPL(environ_sizes_get, "i(ii)"),
    IMPL(fd_read, "i(iiii)"),
    IMPL(fd_write, "i(iiii)"),
    IMPL(fd_fdstat_get, "i(ii)"),
    IMPL(fd_prestat_get, "i(ii)"),
    IMPL(fd_prestat_dir_name, "i(iii)"),
    IMPL(fd_close, "i(i)"),
    IMPL(fd_seek, "i(iIii)"),
    IMPL(fd_tell, "i(ii)"),
    IMPL(clock_time_get, "i(iIi)"),
    IMPL(clock_res_get, "i(ii)"),
    IMPL(random_get, "i(ii)"),
    IMPL(proc_exit, "v(i)"),
    IMPL(sched_yield, "i()"),
    IMPL(poll_oneoff, "i(iiii)"),
    FS(fd_advise, "i(iIIi)"),
    FS(fd_allocate, "i(iII)"),
    FS(fd_datasync, "i(i)"),
    FS(fd_fdstat_set_flags, "i(ii)"),
    FS(fd_fdstat_set_rights, "i(iII)"),
    FS(fd_filestat_get, "i(ii)"),
    FS(fd_filestat_set_size, "i(iI)"),
    FS(fd_filestat_set_times, "i(iIIi)"),
    FS(fd_pread, "i(iiiIi)"),
    FS(fd_pwrite, "i(iiiIi)"),
    FS(fd_readdir, "i(iiiIi)"),
    FS(fd_renumber, "i(ii)"),
    FS(fd_sync, "i(i)"),
    FS(path_create_directory, "i(iii)"),
    FS(path_filestat_get, "i(iiiii)"),
    FS(path_filestat_set_times, "i(iiiiIIi)"),
    FS(path_link, "i(iiiiiii)"),
    FS(path_open, "i(iiiiiIIii)"),
    FS(path_readlink, "i(iiiiii)"),
    FS(path_remove_directory, "i(iii)"),
    FS(path_rename, "i(iiiiii)"),
    FS(path_symlink, "i(iiiii)"),
    FS(path_unlink_file, "i(iii)"),
    STUB(proc_raise, "i(i)", STUB_NOSYS),
    STUB(sock_accept, "i(iii)", STUB_SOCK),
    STUB(sock_recv, "i(iiiiii)", STUB_SOCK),
    STUB(sock_send, "i(iiiii)", STUB_SOCK),
    STUB(sock_shutdown, "i(ii)", STUB_SOCK),
};

#define BINDING_COUNT (sizeof bindings / sizeof bindings[0])
_Static_assert(BINDING_COUNT <= 64, "wasi_imports is a 64-bit mask");

uint32_t phase_wasi_count(void)
{
    return BINDING_COUNT;
}

const phase_wasi_function *phase_wasi_function_at(uint32_t index)
{
    return index < BINDING_COUNT ? &bindings[index].f : NULL;
}

int phase_wasi_lookup(const char *module, size_t module_len, const char *name, size_t name_len,
                      const char *signature, char *err, size_t errlen)
{
    if (module_len != sizeof PHASE_WASI_MODULE - 1 || memcmp(module, PHASE_WASI_MODULE, module_len) != 0) {
        snprintf(err, errlen, "import %.*s.%.*s: only %s functions can be imported",
                 (int) (module_len > 64 ? 64 : module_len), module, (int) (name_len > 64 ? 64 : name_len), name,
                 PHASE_WASI_MODULE);
        return -1;
    }
    for (uint32_t i = 0; i < BINDING_COUNT; i++) {
        const phase_wasi_function *f = &bindings[i].f;
        if (strlen(f->name) == name_len && memcmp(f->name, name, name_len) == 0) {
            if (strcmp(f->signature, signature) != 0) {
                snprintf(err, errlen, "import %s.%s has signature %s, the host provides %s", PHASE_WASI_MODULE,
                         f->name, signature, f->signature);
                return -1;
            }
            return (int) i;
        }
    }
    snprintf(err, errlen, "import %s.%.*s is not provided by this host (no sockets or threads)",
             PHASE_WASI_MODULE, (int) (name_len > 64 ? 64 : name_len), name);
    return -1;
}

M3Result phase_wasi_link(const phase_module *pm, IM3Module module)
{
    uint64_t mask = pm->wasi_imports;
    for (uint32_t i = 0; i < BINDING_COUNT; i++) {
        if (!(mask & (1ull << i)))
            continue;
        /* Stubs carry their kind as userdata; real functions reach the job through the runtime. */
        void *userdata = bindings[i].call == wasi_stub ? (void *) (uintptr_t) bindings[i].kind : NULL;
        M3Result r = m3_LinkRawFunctionEx(module, PHASE_WASI_MODULE, bindings[i].f.name, bindings[i].f.signature,
                                          bindings[i].call, userdata);
        if (r && r != m3Err_functionLookupFailed)
            return r;
    }
    return m3Err_none;
}
