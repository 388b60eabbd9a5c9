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

const char *const phase_trap_output_limit = "[trap] output limit exceeded";
const char *const phase_trap_exit = "[trap] program called exit";

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

static uint32_t strings_get(phase_wasi_call *call, const char *const *list, uint32_t count,
                            uint32_t ptrs, uint32_t buf)
{
    uint64_t bytes;
    strings_sizes(list, count, &bytes);
    uint8_t *p = guest(call, ptrs, (uint64_t) count * 4);
    uint8_t *b = guest(call, buf, bytes);
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

static uint32_t strings_sizes_put(phase_wasi_call *call, const char *const *list, uint32_t count,
                                  uint32_t count_ptr, uint32_t size_ptr)
{
    uint64_t bytes;
    strings_sizes(list, count, &bytes);
    uint8_t *c = guest(call, count_ptr, 4);
    uint8_t *s = guest(call, size_ptr, 4);
    if (!c || !s)
        return WASI_EFAULT;
    wr32(c, count);
    wr32(s, (uint32_t) bytes);
    return WASI_ESUCCESS;
}

static PHASE_WASI_FN(wasi_args_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, argv);
    WASI_ARG(uint32_t, buf);
    const phase_job_spec *spec = call->job->spec;
    WASI_RETURN(strings_get(call, spec->argv, spec->argc, argv, buf));
}

static PHASE_WASI_FN(wasi_args_sizes_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, count_ptr);
    WASI_ARG(uint32_t, size_ptr);
    const phase_job_spec *spec = call->job->spec;
    WASI_RETURN(strings_sizes_put(call, spec->argv, spec->argc, count_ptr, size_ptr));
}

static PHASE_WASI_FN(wasi_environ_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, envp);
    WASI_ARG(uint32_t, buf);
    const phase_job_spec *spec = call->job->spec;
    WASI_RETURN(strings_get(call, spec->envp, spec->envc, envp, buf));
}

static PHASE_WASI_FN(wasi_environ_sizes_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, count_ptr);
    WASI_ARG(uint32_t, size_ptr);
    const phase_job_spec *spec = call->job->spec;
    WASI_RETURN(strings_sizes_put(call, spec->envp, spec->envc, count_ptr, size_ptr));
}

static PHASE_WASI_FN(wasi_fd_read)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, iovs);
    WASI_ARG(uint32_t, iovs_len);
    WASI_ARG(uint32_t, nread_ptr);
    phase_job *job = call->job;
    int stream = phase_fs_stream(job, fd);
    if (stream != 0)
        WASI_RETURN(stream < 0 && fd > 2 ? phase_fs_read(call, fd, iovs, iovs_len, nread_ptr) : WASI_EBADF);
    uint8_t *vec = guest(call, iovs, (uint64_t) iovs_len * 8);
    uint8_t *nread = guest(call, nread_ptr, 4);
    if (!vec || !nread)
        WASI_RETURN(WASI_EFAULT);
    uint64_t total = 0;
    for (uint32_t i = 0; i < iovs_len; i++) {
        uint32_t buf = rd32(vec + 8 * i), len = rd32(vec + 8 * i + 4);
        uint8_t *dst = guest(call, buf, len);
        if (!dst)
            WASI_RETURN(WASI_EFAULT);
        size_t left = job->spec->input_len - job->input_pos;
        size_t n = len < left ? len : left;
        memcpy(dst, job->spec->input + job->input_pos, n);
        job->input_pos += n;
        total += n;
        if (n < len)
            break;
    }
    wr32(nread, (uint32_t) total);
    charge(call, total);
    WASI_RETURN(WASI_ESUCCESS);
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

static PHASE_WASI_FN(wasi_fd_write)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, iovs);
    WASI_ARG(uint32_t, iovs_len);
    WASI_ARG(uint32_t, nwritten_ptr);
    phase_job *job = call->job;
    int stream = phase_fs_stream(job, fd);
    if (stream != 1 && stream != 2)
        WASI_RETURN(stream < 0 && fd > 2 ? phase_fs_write(call, fd, iovs, iovs_len, nwritten_ptr)
                                         : WASI_EBADF);
    uint8_t *vec = guest(call, iovs, (uint64_t) iovs_len * 8);
    uint8_t *nwritten = guest(call, nwritten_ptr, 4);
    if (!vec || !nwritten)
        WASI_RETURN(WASI_EFAULT);
    uint64_t total = 0;
    for (uint32_t i = 0; i < iovs_len; i++) {
        uint32_t buf = rd32(vec + 8 * i), len = rd32(vec + 8 * i + 4);
        const uint8_t *src = guest(call, buf, len);
        if (!src)
            WASI_RETURN(WASI_EFAULT);
        int appended = output_append(job, stream - 1, src, len);
        if (appended == SINK_GONE) {
            if (total)
                break;
            WASI_RETURN(WASI_EPIPE);
        }
        if (appended == OVER_LIMIT) {
            job->output_exceeded = 1;
            WASI_TRAP(phase_trap_output_limit);
        }
        total += len;
    }
    wr32(nwritten, (uint32_t) total);
    charge(call, total);
    WASI_RETURN(WASI_ESUCCESS);
}

static PHASE_WASI_FN(wasi_fd_fdstat_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, stat_ptr);
    int stream = phase_fs_stream(call->job, fd);
    if (stream < 0)
        WASI_RETURN(fd > 2 ? phase_fs_fdstat_get(call, fd, stat_ptr) : WASI_EBADF);
    uint8_t *st = guest(call, stat_ptr, 24);
    if (!st)
        WASI_RETURN(WASI_EFAULT);
    /* filetype unknown (a pipe, not a tty: libc buffers fully); rights: fd_read (1<<1) or fd_write (1<<6),
     * plus poll_fd_readwrite (1<<27). */
    uint64_t rights = (stream == 0 ? (1ull << 1) : (1ull << 6)) | (1ull << 27);
    memset(st, 0, 24);
    st[0] = 0;
    wr16(st + 2, 0);
    wr64(st + 8, rights);
    wr64(st + 16, 0);
    WASI_RETURN(WASI_ESUCCESS);
}

static PHASE_WASI_FN(wasi_fd_prestat_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, ptr);
    WASI_RETURN(phase_fs_prestat_get(call, fd, ptr));
}

static PHASE_WASI_FN(wasi_fd_prestat_dir_name)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, path);
    WASI_ARG(uint32_t, len);
    WASI_RETURN(phase_fs_prestat_dir_name(call, fd, path, len));
}

static PHASE_WASI_FN(wasi_fd_close)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_RETURN(phase_fs_fd_close(call->job, fd));
}

static PHASE_WASI_FN(wasi_fd_seek)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(int64_t, offset);
    WASI_ARG(uint32_t, whence);
    WASI_ARG(uint32_t, result_ptr);
    int stream = phase_fs_stream(call->job, fd);
    WASI_RETURN(stream >= 0 ? WASI_ESPIPE : phase_fs_seek(call, fd, offset, whence, result_ptr));
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

static PHASE_WASI_FN(wasi_clock_time_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, id);
    WASI_ARG(uint64_t, precision);
    WASI_ARG(uint32_t, time_ptr);
    (void) precision;
    uint8_t *dst = guest(call, time_ptr, 8);
    if (!dst)
        WASI_RETURN(WASI_EFAULT);
    uint64_t t;
    uint32_t rc = (uint32_t) clock_read(call->job, id, &t);
    if (rc == WASI_ESUCCESS)
        wr64(dst, t);
    WASI_RETURN(rc);
}

static PHASE_WASI_FN(wasi_clock_res_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, id);
    WASI_ARG(uint32_t, res_ptr);
    if (id > WASI_CLOCK_THREAD_CPUTIME)
        WASI_RETURN(WASI_EINVAL);
    uint8_t *dst = guest(call, res_ptr, 8);
    if (!dst)
        WASI_RETURN(WASI_EFAULT);
    wr64(dst, call->job->spec->deterministic ? 1 : 1000);
    WASI_RETURN(WASI_ESUCCESS);
}

static PHASE_WASI_FN(wasi_random_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, buf);
    WASI_ARG(uint32_t, len);
    phase_job *job = call->job;
    uint8_t *dst = guest(call, buf, len);
    if (!dst)
        WASI_RETURN(WASI_EFAULT);
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
    charge(call, len);
    WASI_RETURN(WASI_ESUCCESS);
}

static PHASE_WASI_FN(wasi_proc_exit)
{
    WASI_ARG(uint32_t, code);
    phase_job *job = call->job;
    job->exited = 1;
    job->exit_code = (int32_t) code;
    WASI_TRAP(phase_trap_exit);
}

static PHASE_WASI_FN(wasi_sched_yield)
{
    (void) call;
    WASI_RET_TYPE(uint32_t);
    WASI_RETURN(WASI_ESUCCESS);
}

/* poll_oneoff: fd subscriptions on stdio are always ready; clock subscriptions sleep (real
 * mode, never past the job's deadline) or advance nothing (deterministic mode) and fire. */
static PHASE_WASI_FN(wasi_poll_oneoff)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, in_ptr);
    WASI_ARG(uint32_t, out_ptr);
    WASI_ARG(uint32_t, nsubs);
    WASI_ARG(uint32_t, nevents_ptr);
    phase_job *job = call->job;
    if (nsubs == 0)
        WASI_RETURN(WASI_EINVAL);
    uint8_t *in = guest(call, in_ptr, (uint64_t) nsubs * 48);
    uint8_t *out = guest(call, out_ptr, (uint64_t) nsubs * 32);
    uint8_t *nevents = guest(call, nevents_ptr, 4);
    if (!in || !out || !nevents)
        WASI_RETURN(WASI_EFAULT);

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
            WASI_TRAP(phase_trap_timeout);
    }

    /* Re-validate: memory cannot move here, but keep to the rule of no pointer across a call. */
    in = guest(call, in_ptr, (uint64_t) nsubs * 48);
    out = guest(call, out_ptr, (uint64_t) nsubs * 32);
    if (!in || !out)
        WASI_RETURN(WASI_EFAULT);
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
    WASI_RETURN(WASI_ESUCCESS);
}

/* Sockets and proc_raise, which a job never has: these exist so that ordinary libc programs link. */
enum stub_kind { STUB_SOCK, STUB_NOSYS };

static PHASE_WASI_FN(wasi_stub)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    switch ((enum stub_kind) (uintptr_t) call->userdata) {
    case STUB_SOCK: WASI_RETURN(fd <= 2 ? WASI_ENOTSOCK : WASI_EBADF);
    default: WASI_RETURN(WASI_ENOSYS);
    }
}

static PHASE_WASI_FN(wasi_fd_tell)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, ptr);
    int stream = phase_fs_stream(call->job, fd);
    WASI_RETURN(stream >= 0 ? WASI_ESPIPE : phase_fs_tell(call, fd, ptr));
}

typedef struct wasi_binding {
    phase_wasi_function f;
    phase_wasi_binding b;
} wasi_binding;

#define IMPL(name, sig) {{#name, sig, 1}, {#name, sig, wasi_##name, STUB_NOSYS}}
#define FS(name, sig) {{#name, sig, 1}, {#name, sig, phase_fs_##name, STUB_NOSYS}}
#define STUB(name, sig, kind) {{#name, sig, 0}, {#name, sig, wasi_stub, kind}}

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

const phase_wasi_binding *phase_wasi_binding_at(uint32_t index)
{
    return index < BINDING_COUNT ? &bindings[index].b : NULL;
}
