/* What the WASI layer's modules share: guest-memory access, fuel charging, the preview1 errno values,
 * and the file system's entry points (phase_wasi_fs.c) that phase_wasi.c dispatches fds >= 3 to.
 *
 * Every guest pointer goes through guest(), which checks it in 64-bit arithmetic against the current
 * memory size; no pointer into linear memory is kept across calls.
 */
#ifndef PHASE_WASI_H
#define PHASE_WASI_H

#include <string.h>

#include "phase_internal.h"

enum {
    WASI_ESUCCESS = 0, WASI_E2BIG = 1, WASI_EACCES = 2, WASI_EAGAIN = 6, WASI_EBADF = 8, WASI_EBUSY = 10,
    WASI_EEXIST = 20, WASI_EFAULT = 21, WASI_EFBIG = 22, WASI_EILSEQ = 25, WASI_EINTR = 27, WASI_EINVAL = 28,
    WASI_EIO = 29, WASI_EISDIR = 31, WASI_ELOOP = 32, WASI_EMFILE = 33, WASI_EMLINK = 34, WASI_ENAMETOOLONG = 37,
    WASI_ENFILE = 41, WASI_ENODEV = 43, WASI_ENOENT = 44, WASI_ENOMEM = 48, WASI_ENOSPC = 51, WASI_ENOSYS = 52,
    WASI_ENOTDIR = 54, WASI_ENOTEMPTY = 55, WASI_ENOTSOCK = 57, WASI_ENOTSUP = 58, WASI_ENOTTY = 59,
    WASI_ENXIO = 60, WASI_EOVERFLOW = 61, WASI_EPERM = 63, WASI_EPIPE = 64, WASI_EROFS = 69, WASI_ESPIPE = 70, WASI_ETXTBSY = 74,
    WASI_EXDEV = 75, WASI_ENOTCAPABLE = 76, WASI_EDQUOT = 19,
};

/* Deterministic clocks and file times start here (2024-01-01T00:00:00Z). */
#define PHASE_DET_EPOCH_NS 1704067200000000000ull

/* A WASI call's small view of the instance it serves, filled by the engine's adapter for every call (wasm3:
 * phase_job.c; wasmtime: phase_wasmtime.c): the job, linear memory as it is now, and the fuel the call's byte
 * moves cost, which the adapter bills to its engine's meter afterwards. */
typedef struct phase_wasi_call {
    phase_job *job;
    uint8_t *mem;
    uint64_t mem_size;
    uint64_t ticks;          /* fuel owed for bytes moved (charge) */
    uintptr_t userdata;      /* the binding's own (a stub's kind) */
} phase_wasi_call;

/* A host function: arguments in 64-bit slots from _sp, the result (if any) in the first slot before them.
 * Returns NULL, or a trap (one of the phase_trap_* strings). Both engines call the same functions. */
typedef const char *(*phase_wasi_fn)(phase_wasi_call *call, uint64_t *_sp);
#define PHASE_WASI_FN(name) const char *name(phase_wasi_call *call, uint64_t *_sp)
#define WASI_RET_TYPE(TYPE) TYPE *raw_return = (TYPE *) (_sp++);
#define WASI_ARG(TYPE, NAME) TYPE NAME = *(TYPE *) (_sp++);
#define WASI_RETURN(VALUE) { *raw_return = (VALUE); return NULL; }
#define WASI_TRAP(VALUE) { return (VALUE); }

/* One WASI function as an engine links it: name, wasm3-style signature ("i(iIii)"), the call, its userdata. */
typedef struct phase_wasi_binding {
    const char *name;
    const char *signature;
    phase_wasi_fn call;
    uintptr_t userdata;
} phase_wasi_binding;
/* The binding of bit i of phase_module.wasi_imports. */
const phase_wasi_binding *phase_wasi_binding_at(uint32_t index);

static inline uint8_t *guest(phase_wasi_call *call, uint64_t offset, uint64_t len)
{
    uint64_t size = call->mem ? call->mem_size : 0;
    if (offset > size || len > size - offset)
        return NULL;
    return call->mem + offset;
}

/* Host calls that move bytes cost fuel like memory.copy does (patch 0007), so a job cannot hide a lot
 * of work between two metering ticks and the timeout check on the slow path comes round soon. */
static inline void charge(phase_wasi_call *call, uint64_t bytes)
{
    call->ticks += bytes / PHASE_BYTES_PER_TICK;
}

static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- phase_wasi_fs.c: descriptors 3 and up (preopened directories and what is opened beneath them) ---- */

/* Fill the job's descriptor table with its preopens (dup'd: the caller keeps its own fds). 0, or -1 with
 * the job's result set (crashed: out of descriptors or memory). */
int phase_fs_open(phase_job *job);
/* Close every descriptor the job still holds. */
void phase_fs_close(phase_job *job);

/* The stdio stream (0 stdin, 1 stdout, 2 stderr) guest fd holds (fds 0-2, or one renumbered higher), or -1. */
int phase_fs_stream(phase_job *job, uint32_t fd);
uint32_t phase_fs_read(phase_wasi_call *call, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nread);
uint32_t phase_fs_write(phase_wasi_call *call, uint32_t fd, uint32_t iovs, uint32_t iovs_len,
                        uint32_t nwritten);
uint32_t phase_fs_fdstat_get(phase_wasi_call *call, uint32_t fd, uint32_t stat);
uint32_t phase_fs_prestat_get(phase_wasi_call *call, uint32_t fd, uint32_t out);
uint32_t phase_fs_prestat_dir_name(phase_wasi_call *call, uint32_t fd, uint32_t path, uint32_t len);
uint32_t phase_fs_fd_close(phase_job *job, uint32_t fd);   /* any fd, stdio included */
uint32_t phase_fs_seek(phase_wasi_call *call, uint32_t fd, int64_t offset, uint32_t whence, uint32_t out);
uint32_t phase_fs_tell(phase_wasi_call *call, uint32_t fd, uint32_t out);
/* poll_oneoff: a file or directory descriptor (not stdio) is always ready; 0 if fd is one, else a WASI errno. */
uint32_t phase_fs_poll_ready(phase_job *job, uint32_t fd);

/* The rest of the preview1 file system, linked by phase_wasi.c's table. */
#define PHASE_FS_FUNCTIONS(X) \
    X(fd_advise) X(fd_allocate) X(fd_datasync) X(fd_fdstat_set_flags) X(fd_fdstat_set_rights) \
    X(fd_filestat_get) X(fd_filestat_set_size) X(fd_filestat_set_times) X(fd_pread) X(fd_pwrite) \
    X(fd_readdir) X(fd_renumber) X(fd_sync) X(path_create_directory) X(path_filestat_get) \
    X(path_filestat_set_times) X(path_link) X(path_open) X(path_readlink) X(path_remove_directory) \
    X(path_rename) X(path_symlink) X(path_unlink_file)
#define PHASE_FS_DECLARE(name) PHASE_WASI_FN(phase_fs_##name);
PHASE_FS_FUNCTIONS(PHASE_FS_DECLARE)

#endif
