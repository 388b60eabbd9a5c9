/* The WASI preview1 file system: preopened directories and what a job opens beneath them.
 *
 * A job's descriptors 3.. live in a table of at most PHASE_MAX_FDS host fds (job->fds). Every path a
 * guest names is resolved beneath a directory fd it holds by openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS): `..` past the directory, absolute paths and symlinks that lead out (also ones
 * swapped in while the job runs: the kernel resolves each call atomically) fail with ENOTCAPABLE. Calls
 * that name an entry rather than open it (mkdir, unlink, rename, link, symlink, readlink) open the
 * entry's parent that way and then act on one final component relative to it, which cannot leave it;
 * stat and utimes open the entry itself as O_PATH and act on that fd.
 *
 * Rights follow preview1: a descriptor's base rights gate the calls on it, its inheriting rights bound
 * what path_open can give a new one, and fd_fdstat_set_rights only narrows. A read-only preopen never has
 * a right that creates, changes or removes anything. Deterministic mode reports fixed times, inode
 * numbers derived from the guest's path and directory entries in name order, so replicas agree.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "phase_wasi.h"

/* ---- preview1 constants ---------------------------------------------------------------------- */

enum { FT_UNKNOWN = 0, FT_BLOCK = 1, FT_CHAR = 2, FT_DIR = 3, FT_REG = 4, FT_SOCK_STREAM = 6, FT_SYMLINK = 7 };
enum { FDF_APPEND = 1, FDF_DSYNC = 2, FDF_NONBLOCK = 4, FDF_RSYNC = 8, FDF_SYNC = 16 };
enum { OF_CREAT = 1, OF_DIRECTORY = 2, OF_EXCL = 4, OF_TRUNC = 8 };
enum { LOOKUP_SYMLINK_FOLLOW = 1 };
enum { FST_ATIM = 1, FST_ATIM_NOW = 2, FST_MTIM = 4, FST_MTIM_NOW = 8 };

#define R(bit) (1ull << (bit))
#define R_FD_DATASYNC R(0)
#define R_FD_READ R(1)
#define R_FD_SEEK R(2)
#define R_FD_FDSTAT_SET_FLAGS R(3)
#define R_FD_SYNC R(4)
#define R_FD_TELL R(5)
#define R_FD_WRITE R(6)
#define R_FD_ADVISE R(7)
#define R_FD_ALLOCATE R(8)
#define R_PATH_CREATE_DIRECTORY R(9)
#define R_PATH_CREATE_FILE R(10)
#define R_PATH_LINK_SOURCE R(11)
#define R_PATH_LINK_TARGET R(12)
#define R_PATH_OPEN R(13)
#define R_FD_READDIR R(14)
#define R_PATH_READLINK R(15)
#define R_PATH_RENAME_SOURCE R(16)
#define R_PATH_RENAME_TARGET R(17)
#define R_PATH_FILESTAT_GET R(18)
#define R_PATH_FILESTAT_SET_SIZE R(19)
#define R_PATH_FILESTAT_SET_TIMES R(20)
#define R_FD_FILESTAT_GET R(21)
#define R_FD_FILESTAT_SET_SIZE R(22)
#define R_FD_FILESTAT_SET_TIMES R(23)
#define R_PATH_SYMLINK R(24)
#define R_PATH_REMOVE_DIRECTORY R(25)
#define R_PATH_UNLINK_FILE R(26)
#define R_POLL_FD_READWRITE R(27)

/* What a directory and a regular file can ever have. path_filestat_set_size is never granted: preview1 has
 * no call that uses it, and path_open(O_TRUNC) is governed by the file's write access instead. */
#define RIGHTS_DIR                                                                                             \
    (R_FD_FDSTAT_SET_FLAGS | R_FD_SYNC | R_FD_ADVISE | R_PATH_CREATE_DIRECTORY | R_PATH_CREATE_FILE            \
     | R_PATH_LINK_SOURCE | R_PATH_LINK_TARGET | R_PATH_OPEN | R_FD_READDIR | R_PATH_READLINK                 \
     | R_PATH_RENAME_SOURCE | R_PATH_RENAME_TARGET | R_PATH_FILESTAT_GET | R_PATH_FILESTAT_SET_TIMES          \
     | R_FD_FILESTAT_GET | R_FD_FILESTAT_SET_TIMES | R_PATH_SYMLINK | R_PATH_REMOVE_DIRECTORY                 \
     | R_PATH_UNLINK_FILE | R_FD_DATASYNC)
#define RIGHTS_FILE                                                                                            \
    (R_FD_DATASYNC | R_FD_READ | R_FD_SEEK | R_FD_FDSTAT_SET_FLAGS | R_FD_SYNC | R_FD_TELL | R_FD_WRITE         \
     | R_FD_ADVISE | R_FD_ALLOCATE | R_FD_FILESTAT_GET | R_FD_FILESTAT_SET_SIZE | R_FD_FILESTAT_SET_TIMES      \
     | R_POLL_FD_READWRITE)
/* Rights that create, change or remove: never on anything under a read-only preopen. */
#define RIGHTS_MUTATE                                                                                          \
    (R_FD_DATASYNC | R_FD_WRITE | R_FD_ALLOCATE | R_FD_FILESTAT_SET_SIZE | R_FD_FILESTAT_SET_TIMES             \
     | R_PATH_CREATE_DIRECTORY | R_PATH_CREATE_FILE | R_PATH_LINK_SOURCE | R_PATH_LINK_TARGET                 \
     | R_PATH_RENAME_SOURCE | R_PATH_RENAME_TARGET | R_PATH_FILESTAT_SET_SIZE | R_PATH_FILESTAT_SET_TIMES      \
     | R_PATH_SYMLINK | R_PATH_REMOVE_DIRECTORY | R_PATH_UNLINK_FILE | R_FD_FDSTAT_SET_FLAGS)
/* Rights that need the host fd open for reading / writing. */
#define RIGHTS_NEED_READ (R_FD_READ | R_FD_READDIR)
#define RIGHTS_NEED_WRITE (R_FD_WRITE | R_FD_ALLOCATE | R_FD_FILESTAT_SET_SIZE)

/* A directory listing larger than this (names + headers) is refused with ENOMEM rather than held. */
#define DIR_LISTING_MAX_BYTES (16u << 20)

typedef struct dir_entry {
    uint64_t ino;
    uint8_t type;
    uint32_t namelen;
    char *name;
} dir_entry;

typedef struct phase_fs_fd {
    int host;                 /* -1: a free slot; HOST_STREAM: a stdio stream renumbered here */
    int8_t stream;            /* with HOST_STREAM: which */
    uint8_t filetype;
    uint8_t readonly;         /* beneath a read-only preopen */
    int32_t preopen;          /* index into spec->preopens, or -1 */
    uint32_t root;            /* the preopen it was opened beneath (deterministic device and inode numbers) */
    uint64_t base, inheriting;
    char *path;               /* deterministic mode: its path beneath the preopen, normalised */
    dir_entry *entries;       /* fd_readdir's listing, taken at cookie 0, in name order */
    uint32_t nentries;
} phase_fs_fd;

#define TABLE(job) ((job)->fds)
#define HOST_STREAM (-2)

/* ---- errors and descriptors -------------------------------------------------------------------- */

static uint32_t wasi_errno(int e)
{
    switch (e) {
    case 0: return WASI_ESUCCESS;
    case E2BIG: return WASI_E2BIG;
    case EACCES: return WASI_EACCES;
    case EAGAIN: return WASI_EAGAIN;
    case EBADF: return WASI_EBADF;
    case EBUSY: return WASI_EBUSY;
    case EDQUOT: return WASI_EDQUOT;
    case EEXIST: return WASI_EEXIST;
    case EFAULT: return WASI_EFAULT;
    case EFBIG: return WASI_EFBIG;
    case EILSEQ: return WASI_EILSEQ;
    case EINTR: return WASI_EINTR;
    case EINVAL: return WASI_EINVAL;
    case EIO: return WASI_EIO;
    case EISDIR: return WASI_EISDIR;
    case ELOOP: return WASI_ELOOP;
    case EMFILE: return WASI_EMFILE;
    case EMLINK: return WASI_EMLINK;
    case ENAMETOOLONG: return WASI_ENAMETOOLONG;
    case ENFILE: return WASI_ENFILE;
    case ENODEV: return WASI_ENODEV;
    case ENOENT: return WASI_ENOENT;
    case ENOMEM: return WASI_ENOMEM;
    case ENOSPC: return WASI_ENOSPC;
    case ENOSYS: return WASI_ENOSYS;
    case ENOTDIR: return WASI_ENOTDIR;
    case ENOTEMPTY: return WASI_ENOTEMPTY;
    case EOPNOTSUPP: return WASI_ENOTSUP;
    case ENOTTY: return WASI_ENOTTY;
    case ENXIO: return WASI_ENXIO;
    case EOVERFLOW: return WASI_EOVERFLOW;
    case EPERM: return WASI_EPERM;
    case EROFS: return WASI_EROFS;
    case ESPIPE: return WASI_ESPIPE;
    case ETXTBSY: return WASI_ETXTBSY;
    case EXDEV: return WASI_ENOTCAPABLE;   /* openat2(RESOLVE_BENEATH): the path would leave the directory */
    default: return WASI_EIO;
    }
}

/* The table slot of fd >= 3, whatever it holds (NULL: out of range or free). */
static phase_fs_fd *slot_of(phase_job *job, uint32_t fd)
{
    if (fd < 3 || fd - 3 >= job->fds_len || TABLE(job)[fd - 3].host == -1)
        return NULL;
    return &TABLE(job)[fd - 3];
}

/* The file or directory at fd (not a stdio stream). */
static phase_fs_fd *lookup(phase_job *job, uint32_t fd)
{
    phase_fs_fd *f = slot_of(job, fd);
    return f && f->host >= 0 ? f : NULL;
}

int phase_fs_stream(phase_job *job, uint32_t fd)
{
    if (fd <= 2)
        return job->stdio[fd];
    phase_fs_fd *f = slot_of(job, fd);
    return f && f->host == HOST_STREAM ? f->stream : -1;
}

/* The descriptor with `rights`; *rc says why not (EBADF, or ENOTCAPABLE when the rights are missing). */
static phase_fs_fd *lookup_rights(phase_job *job, uint32_t fd, uint64_t rights, uint32_t *rc)
{
    phase_fs_fd *f = lookup(job, fd);
    if (!f) {
        *rc = WASI_EBADF;
        return NULL;
    }
    if ((f->base & rights) != rights) {
        *rc = WASI_ENOTCAPABLE;
        return NULL;
    }
    return f;
}

/* lookup_rights for the fd_* calls, where stdio (fds 0-2) answers stdio_rc. */
static phase_fs_fd *fd_arg(phase_job *job, uint32_t fd, uint64_t rights, uint32_t stdio_rc, uint32_t *rc)
{
    if (fd <= 2) {
        *rc = stdio_rc;
        return NULL;
    }
    return lookup_rights(job, fd, rights, rc);
}

/* In a host function: `f` is the file `fd` names with `rights`, or the function returns why (stdio: `stdio_rc`). */
#define FD_ARG_OR_RETURN(f, fd, rights, stdio_rc)                        \
    uint32_t f##_rc;                                                     \
    phase_fs_fd *f = fd_arg(call->job, (fd), (rights), (stdio_rc), &f##_rc); \
    if (!f)                                                                 \
        WASI_RETURN(f##_rc)

static void slot_clear(phase_fs_fd *f)
{
    if (f->host >= 0)
        close(f->host);
    for (uint32_t i = 0; i < f->nentries; i++)
        free(f->entries[i].name);
    free(f->entries);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->host = -1;
    f->preopen = -1;
}

/* The lowest free WASI fd >= 3, growing the table up to PHASE_MAX_FDS; -1 when the job holds too many. */
static int64_t slot_alloc(phase_job *job)
{
    for (uint32_t i = 0; i < job->fds_len; i++)
        if (TABLE(job)[i].host == -1)
            return i;
    if (job->fds_len >= PHASE_MAX_FDS)
        return -1;
    uint32_t grown = job->fds_len ? job->fds_len * 2 : 8;
    if (grown > PHASE_MAX_FDS)
        grown = PHASE_MAX_FDS;
    phase_fs_fd *t = realloc(job->fds, grown * sizeof *t);
    if (!t)
        return -1;
    for (uint32_t i = job->fds_len; i < grown; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].host = -1;
        t[i].preopen = -1;
    }
    job->fds = t;
    uint32_t first = job->fds_len;
    job->fds_len = grown;
    return first;
}

static uint8_t filetype_of(mode_t mode)
{
    if (S_ISDIR(mode)) return FT_DIR;
    if (S_ISREG(mode)) return FT_REG;
    if (S_ISLNK(mode)) return FT_SYMLINK;
    if (S_ISCHR(mode)) return FT_CHAR;
    if (S_ISBLK(mode)) return FT_BLOCK;
    if (S_ISSOCK(mode)) return FT_SOCK_STREAM;
    return FT_UNKNOWN;
}

/* ---- the scratch quota (phase_fs_quota) ----------------------------------------------------------------
 *
 * Every call that creates, grows, shrinks or removes something beneath a writable directory of a quota'd job checks
 * the bound first and counts what it did after, from the file system's own answer (fstat): bytes per inode (a
 * file's size rounded up to a block; a block per directory or symlink), entries per name. Space an unlinked file
 * still holds while the job has it open is counted until its last descriptor closes. */

#define QUOTA_BLOCK ((uint64_t) PHASE_FS_QUOTA_BLOCK)

static uint64_t quota_blocks(uint64_t size)
{
    return (size + QUOTA_BLOCK - 1) / QUOTA_BLOCK * QUOTA_BLOCK;
}

/* Whether changes beneath a descriptor count: the job has a quota and the directory is writable. */
static int counted(const phase_job *job, int readonly)
{
    return job->spec->quota.enabled && !readonly;
}

static uint32_t quota_refuse(phase_job *job, int which)
{
    if (!job->result->fs_limit)
        job->result->fs_limit = which;
    return WASI_EDQUOT;
}

/* Bytes that may still be added before the bound. */
static uint64_t quota_room(const phase_job *job)
{
    const phase_fs_quota *q = &job->spec->quota;
    return job->fs_bytes < q->max_bytes ? q->max_bytes - job->fs_bytes : 0;
}

/* ESUCCESS if `bytes` more bytes and `entries` more entries fit, else EDQUOT (and the result says which). */
static uint32_t quota_fits(phase_job *job, uint64_t bytes, uint64_t entries)
{
    const phase_fs_quota *q = &job->spec->quota;
    if (entries && (job->fs_files >= q->max_files || entries > q->max_files - job->fs_files))
        return quota_refuse(job, PHASE_FS_LIMIT_FILES);
    if (bytes > quota_room(job))
        return quota_refuse(job, PHASE_FS_LIMIT_BYTES);
    return WASI_ESUCCESS;
}

/* ESUCCESS if a regular file may grow from `from` to `to` bytes. */
static uint32_t quota_grows(phase_job *job, uint64_t from, uint64_t to)
{
    uint64_t a = quota_blocks(from), b = quota_blocks(to);
    return b > a ? quota_fits(job, b - a, 0) : WASI_ESUCCESS;
}

static void quota_add(phase_job *job, int64_t bytes, int64_t entries)
{
    job->fs_bytes = bytes < 0 && (uint64_t) -bytes > job->fs_bytes ? 0 : job->fs_bytes + (uint64_t) bytes;
    job->fs_files = entries < 0 && (uint64_t) -entries > job->fs_files ? 0 : job->fs_files + (uint64_t) entries;
}

static void quota_resized(phase_job *job, uint64_t from, uint64_t to)
{
    quota_add(job, (int64_t) quota_blocks(to) - (int64_t) quota_blocks(from), 0);
}

/* Whether a descriptor of the job other than `except` holds the regular file dev/ino open. */
static int inode_open(phase_job *job, dev_t dev, ino_t ino, const phase_fs_fd *except)
{
    for (uint32_t i = 0; i < job->fds_len; i++) {
        phase_fs_fd *f = &TABLE(job)[i];
        struct stat st;
        if (f != except && f->host >= 0 && f->filetype == FT_REG && fstat(f->host, &st) == 0 && st.st_dev == dev
            && st.st_ino == ino)
            return 1;
    }
    return 0;
}

/* An entry described by `st` (lstat before it went) was removed or replaced: its name, and its space when that
 * was the last name and nothing holds it open. */
static void quota_removed(phase_job *job, const struct stat *st)
{
    int64_t bytes = 0;
    if (S_ISDIR(st->st_mode) || S_ISLNK(st->st_mode))
        bytes = (int64_t) QUOTA_BLOCK;
    else if (S_ISREG(st->st_mode) && st->st_nlink <= 1 && !inode_open(job, st->st_dev, st->st_ino, NULL))
        bytes = (int64_t) quota_blocks((uint64_t) st->st_size);
    quota_add(job, -bytes, -1);
}

/* Close a descriptor the job closes (fd_close, fd_renumber over it): the space of an unlinked file goes with its
 * last descriptor. */
static void slot_release(phase_job *job, phase_fs_fd *f)
{
    struct stat st;
    if (f->host >= 0 && f->filetype == FT_REG && counted(job, f->readonly) && fstat(f->host, &st) == 0
        && st.st_nlink == 0 && !inode_open(job, st.st_dev, st.st_ino, f))
        quota_add(job, -(int64_t) quota_blocks((uint64_t) st.st_size), 0);
    slot_clear(f);
}

/* ---- job set-up and tear-down ------------------------------------------------------------------ */

int phase_fs_open(phase_job *job)
{
    const phase_job_spec *spec = job->spec;
    for (int i = 0; i < 3; i++)
        job->stdio[i] = (int8_t) i;
    job->fs_bytes = spec->quota.used_bytes;
    job->fs_files = spec->quota.used_files;
    for (uint32_t i = 0; i < spec->npreopens && i < PHASE_MAX_PREOPENS; i++) {
        int64_t slot = slot_alloc(job);
        int host = slot < 0 ? -1 : fcntl(spec->preopens[i].fd, F_DUPFD_CLOEXEC, 0);
        if (host < 0) {
            job->result->status = PHASE_CRASHED;
            snprintf(job->result->message, sizeof job->result->message, "preopened directory %s: %s",
                     spec->preopens[i].guest, strerror(slot < 0 ? ENOMEM : errno));
            return -1;
        }
        phase_fs_fd *f = &TABLE(job)[slot];
        f->host = host;
        f->filetype = FT_DIR;
        f->preopen = (int32_t) i;
        f->root = i;
        f->readonly = spec->preopens[i].readonly != 0;
        f->base = RIGHTS_DIR;
        f->inheriting = RIGHTS_DIR | RIGHTS_FILE;
        if (f->readonly) {
            f->base &= ~RIGHTS_MUTATE;
            f->inheriting &= ~RIGHTS_MUTATE;
        }
        if (spec->deterministic && !(f->path = strdup(""))) {
            job->result->status = PHASE_CRASHED;
            snprintf(job->result->message, sizeof job->result->message, "out of memory");
            return -1;
        }
    }
    return 0;
}

void phase_fs_close(phase_job *job)
{
    for (uint32_t i = 0; i < job->fds_len; i++)
        slot_clear(&TABLE(job)[i]);
    free(job->fds);
    job->fds = NULL;
    job->fds_len = 0;
}

/* ---- paths --------------------------------------------------------------------------------------- */

/* The guest's path as a C string in out[PATH_MAX]: EFAULT, EINVAL (a NUL inside) or ENAMETOOLONG. */
static uint32_t guest_path(phase_wasi_call *call, uint32_t ptr, uint32_t len, char *out)
{
    if (len >= PATH_MAX)
        return WASI_ENAMETOOLONG;
    const uint8_t *p = guest(call, ptr, len);
    if (!p)
        return WASI_EFAULT;
    if (memchr(p, 0, len))
        return WASI_EINVAL;
    memcpy(out, p, len);
    out[len] = 0;
    return WASI_ESUCCESS;
}

static int openat_beneath(int dirfd, const char *path, uint64_t flags, uint64_t mode)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags | O_CLOEXEC;
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    int fd;
    do
        fd = (int) syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    while (fd < 0 && errno == EINTR);
    return fd;
}

/* A parent directory and one final component of a path (see the top of the file). */
typedef struct split_path {
    int parent;              /* the directory fd the name is relative to */
    int owned;               /* parent was opened here (close it) */
    const char *name;        /* the last component, trailing slashes kept (the kernel's rules for them apply) */
    int dots;                /* the last component is "." or ".." */
} split_path;

static uint32_t split_open(int dirfd, char *path, split_path *sp)
{
    size_t len = strlen(path);
    memset(sp, 0, sizeof *sp);
    sp->parent = -1;
    if (len == 0)
        return WASI_ENOENT;
    if (path[0] == '/')
        return WASI_ENOTCAPABLE;
    size_t end = len;
    while (end > 0 && path[end - 1] == '/')
        end--;
    size_t start = end;
    while (start > 0 && path[start - 1] != '/')
        start--;
    sp->name = path + start;
    size_t nlen = end - start;
    sp->dots = (nlen == 1 && sp->name[0] == '.') || (nlen == 2 && sp->name[0] == '.' && sp->name[1] == '.');
    if (start == 0) {
        sp->parent = dirfd;
        return WASI_ESUCCESS;
    }
    char dir[PATH_MAX];
    memcpy(dir, path, start);
    dir[start] = 0;
    int fd = openat_beneath(dirfd, dir, O_PATH | O_DIRECTORY, 0);
    if (fd < 0)
        return wasi_errno(errno);
    sp->parent = fd;
    sp->owned = 1;
    return WASI_ESUCCESS;
}

static void split_close(split_path *sp)
{
    if (sp->owned && sp->parent >= 0)
        close(sp->parent);
    sp->parent = -1;
}

/* Lexically normalised `base/rel` (deterministic inode numbers); NULL when out of memory. */
static char *join_normalised(const char *base, const char *rel)
{
    size_t cap = strlen(base) + strlen(rel) + 2;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t n = 0;
    const char *parts[2] = {base, rel};
    for (int k = 0; k < 2; k++) {
        const char *s = parts[k];
        while (*s) {
            while (*s == '/')
                s++;
            const char *e = s;
            while (*e && *e != '/')
                e++;
            size_t l = (size_t) (e - s);
            if (l == 0 || (l == 1 && s[0] == '.')) {
            } else if (l == 2 && s[0] == '.' && s[1] == '.') {
                while (n > 0 && out[n - 1] != '/')
                    n--;
                if (n > 0)
                    n--;
            } else {
                if (n)
                    out[n++] = '/';
                memcpy(out + n, s, l);
                n += l;
            }
            s = e;
        }
    }
    out[n] = 0;
    return out;
}

static uint64_t det_ino(uint32_t root, const char *path)
{
    uint64_t h = 1469598103934665603ull ^ root;   /* FNV-1a */
    for (const char *p = path; *p; p++)
        h = (h ^ (uint8_t) *p) * 1099511628211ull;
    return h ? h : 1;
}

/* ---- stat ---------------------------------------------------------------------------------------- */

static void put_filestat(phase_job *job, uint8_t *out, const struct stat *st, uint32_t root, const char *det_path)
{
    memset(out, 0, 64);
    if (job->spec->deterministic) {
        wr64(out + 0, root + 1);
        wr64(out + 8, det_ino(root, det_path ? det_path : ""));
    } else {
        wr64(out + 0, st->st_dev);
        wr64(out + 8, st->st_ino);
    }
    out[16] = filetype_of(st->st_mode);
    wr64(out + 24, st->st_nlink);
    wr64(out + 32, (uint64_t) st->st_size);
    if (job->spec->deterministic) {
        wr64(out + 40, PHASE_DET_EPOCH_NS);
        wr64(out + 48, PHASE_DET_EPOCH_NS);
        wr64(out + 56, PHASE_DET_EPOCH_NS);
    } else {
        wr64(out + 40, (uint64_t) st->st_atim.tv_sec * 1000000000ull + (uint64_t) st->st_atim.tv_nsec);
        wr64(out + 48, (uint64_t) st->st_mtim.tv_sec * 1000000000ull + (uint64_t) st->st_mtim.tv_nsec);
        wr64(out + 56, (uint64_t) st->st_ctim.tv_sec * 1000000000ull + (uint64_t) st->st_ctim.tv_nsec);
    }
}

/* fstflags -> the two timespecs of utimensat; EINVAL for contradictory or unknown flags. */
static uint32_t make_times(uint64_t atim, uint64_t mtim, uint32_t flags, struct timespec ts[2])
{
    if (flags & ~(uint32_t) (FST_ATIM | FST_ATIM_NOW | FST_MTIM | FST_MTIM_NOW))
        return WASI_EINVAL;
    if (((flags & FST_ATIM) && (flags & FST_ATIM_NOW)) || ((flags & FST_MTIM) && (flags & FST_MTIM_NOW)))
        return WASI_EINVAL;
    uint64_t t[2] = {atim, mtim};
    uint32_t set[2] = {FST_ATIM, FST_MTIM}, now[2] = {FST_ATIM_NOW, FST_MTIM_NOW};
    for (int i = 0; i < 2; i++) {
        if (flags & set[i]) {
            ts[i].tv_sec = (time_t) (t[i] / 1000000000ull);
            ts[i].tv_nsec = (long) (t[i] % 1000000000ull);
        } else {
            ts[i].tv_sec = 0;
            ts[i].tv_nsec = (flags & now[i]) ? UTIME_NOW : UTIME_OMIT;
        }
    }
    return WASI_ESUCCESS;
}

/* ---- fd_* on descriptors 3.. --------------------------------------------------------------------- */

#define IOV_BATCH 64

/* Read or write through the guest's iovecs (validated; at most IOV_BATCH of them per call, as a short
 * read or write). offset < 0: at the file position. */
static uint32_t transfer(phase_wasi_call *call, phase_fs_fd *f, uint32_t iovs, uint32_t iovs_len,
                         int64_t offset, int writing, uint32_t out_ptr)
{
    uint8_t *vec = guest(call, iovs, (uint64_t) iovs_len * 8);
    uint8_t *out = guest(call, out_ptr, 4);
    if (!vec || !out)
        return WASI_EFAULT;
    struct iovec io[IOV_BATCH];
    int n = 0;
    for (uint32_t i = 0; i < iovs_len && n < IOV_BATCH; i++) {
        uint32_t buf = rd32(vec + 8 * i), len = rd32(vec + 8 * i + 4);
        uint8_t *p = guest(call, buf, len);
        if (!p)
            return WASI_EFAULT;
        if (len == 0)
            continue;
        io[n].iov_base = p;
        io[n].iov_len = len;
        n++;
    }
    /* A quota'd write grows the file at most to the bound: short, or EDQUOT when not one byte fits. */
    int quota = writing && n && f->filetype == FT_REG && counted(call->job, f->readonly);
    struct stat st;
    if (quota) {
        if (fstat(f->host, &st) != 0)
            return wasi_errno(errno);
        uint64_t size = (uint64_t) st.st_size, pos, total = 0;
        int fl = fcntl(f->host, F_GETFL);
        if (offset >= 0) {
            pos = (uint64_t) offset;
        } else if (fl >= 0 && (fl & O_APPEND)) {
            pos = size;
        } else {
            off_t p = lseek(f->host, 0, SEEK_CUR);
            if (p < 0)
                return wasi_errno(errno);
            pos = (uint64_t) p;
        }
        for (int i = 0; i < n; i++)
            total += io[i].iov_len;
        uint64_t cap = quota_blocks(size) + quota_room(call->job) / QUOTA_BLOCK * QUOTA_BLOCK;
        if (pos + total > cap) {
            if (pos >= cap)
                return quota_refuse(call->job, PHASE_FS_LIMIT_BYTES);
            uint64_t keep = cap - pos;
            int k = 0;
            while (k < n && keep > 0) {
                if (io[k].iov_len > keep)
                    io[k].iov_len = keep;
                keep -= io[k].iov_len;
                k++;
            }
            n = k;
        }
    }
    ssize_t done;
    if (n == 0)
        done = 0;
    else if (offset < 0)
        done = writing ? writev(f->host, io, n) : readv(f->host, io, n);
    else
        done = writing ? pwritev(f->host, io, n, offset) : preadv(f->host, io, n, offset);
    if (done < 0)
        return wasi_errno(errno);
    if (quota) {
        struct stat after;
        if (fstat(f->host, &after) == 0)
            quota_resized(call->job, (uint64_t) st.st_size, (uint64_t) after.st_size);
    }
    wr32(out, (uint32_t) done);
    charge(call, (uint64_t) done);
    return WASI_ESUCCESS;
}

/* fd_read/fd_write (offset < 0) and fd_pread/fd_pwrite on a file: a missing read or write right is EBADF, as
 * for a file not open that way. */
static uint32_t read_write(phase_wasi_call *call, uint32_t fd, uint32_t iovs, uint32_t iovs_len,
                           int64_t offset, int writing, uint32_t out)
{
    if (fd <= 2)
        return WASI_ESPIPE;
    uint64_t need = (writing ? R_FD_WRITE : R_FD_READ) | (offset >= 0 ? R_FD_SEEK : 0);
    uint32_t rc;
    phase_fs_fd *f = lookup_rights(call->job, fd, need, &rc);
    if (!f)
        return rc == WASI_ENOTCAPABLE ? WASI_EBADF : rc;
    return transfer(call, f, iovs, iovs_len, offset, writing, out);
}

uint32_t phase_fs_read(phase_wasi_call *call, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nread)
{
    return read_write(call, fd, iovs, iovs_len, -1, 0, nread);
}

uint32_t phase_fs_write(phase_wasi_call *call, uint32_t fd, uint32_t iovs, uint32_t iovs_len,
                        uint32_t nwritten)
{
    return read_write(call, fd, iovs, iovs_len, -1, 1, nwritten);
}

static uint32_t positional(phase_wasi_call *call, uint32_t fd, uint32_t iovs, uint32_t iovs_len,
                           uint64_t offset, int writing, uint32_t out)
{
    if (offset > INT64_MAX)
        return WASI_EINVAL;
    return read_write(call, fd, iovs, iovs_len, (int64_t) offset, writing, out);
}

PHASE_WASI_FN(phase_fs_fd_pread)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, iovs);
    WASI_ARG(uint32_t, iovs_len);
    WASI_ARG(uint64_t, offset);
    WASI_ARG(uint32_t, nread);
    WASI_RETURN(positional(call, fd, iovs, iovs_len, offset, 0, nread));
}

PHASE_WASI_FN(phase_fs_fd_pwrite)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, iovs);
    WASI_ARG(uint32_t, iovs_len);
    WASI_ARG(uint64_t, offset);
    WASI_ARG(uint32_t, nwritten);
    WASI_RETURN(positional(call, fd, iovs, iovs_len, offset, 1, nwritten));
}

uint32_t phase_fs_seek(phase_wasi_call *call, uint32_t fd, int64_t offset, uint32_t whence, uint32_t out)
{
    /* A pure position query needs only fd_tell. */
    uint64_t need = (whence == 1 && offset == 0) ? R_FD_TELL : R_FD_SEEK;
    phase_fs_fd *f = lookup(call->job, fd);
    if (!f)
        return WASI_EBADF;
    if (f->filetype == FT_DIR)
        return WASI_EBADF;
    if (!(f->base & need) && !(need == R_FD_TELL && (f->base & R_FD_SEEK)))
        return WASI_ENOTCAPABLE;
    if (whence > 2)
        return WASI_EINVAL;
    uint8_t *dst = guest(call, out, 8);
    if (!dst)
        return WASI_EFAULT;
    static const int whences[3] = {SEEK_SET, SEEK_CUR, SEEK_END};
    off_t pos = lseek(f->host, (off_t) offset, whences[whence]);
    if (pos < 0)
        return wasi_errno(errno);
    wr64(dst, (uint64_t) pos);
    return WASI_ESUCCESS;
}

uint32_t phase_fs_tell(phase_wasi_call *call, uint32_t fd, uint32_t out)
{
    return phase_fs_seek(call, fd, 0, 1, out);
}

static uint16_t host_fdflags(int host)
{
    int fl = fcntl(host, F_GETFL);
    uint16_t flags = 0;
    if (fl < 0)
        return 0;
    if (fl & O_APPEND) flags |= FDF_APPEND;
    if (fl & O_NONBLOCK) flags |= FDF_NONBLOCK;
    if ((fl & O_SYNC) == O_SYNC) flags |= FDF_SYNC | FDF_RSYNC;
    else if (fl & O_DSYNC) flags |= FDF_DSYNC;
    return flags;
}

uint32_t phase_fs_fdstat_get(phase_wasi_call *call, uint32_t fd, uint32_t stat)
{
    phase_fs_fd *f = lookup(call->job, fd);
    if (!f)
        return WASI_EBADF;
    uint8_t *st = guest(call, stat, 24);
    if (!st)
        return WASI_EFAULT;
    memset(st, 0, 24);
    st[0] = f->filetype;
    wr16(st + 2, host_fdflags(f->host));
    wr64(st + 8, f->base);
    wr64(st + 16, f->inheriting);
    return WASI_ESUCCESS;
}

PHASE_WASI_FN(phase_fs_fd_fdstat_set_flags)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, flags);
    FD_ARG_OR_RETURN(f, fd, R_FD_FDSTAT_SET_FLAGS, WASI_ENOTSUP);
    if (flags & ~(uint32_t) (FDF_APPEND | FDF_DSYNC | FDF_NONBLOCK | FDF_RSYNC | FDF_SYNC))
        WASI_RETURN(WASI_EINVAL);
    /* Linux changes only O_APPEND and O_NONBLOCK on an open file; the sync flags are fixed at open. */
    if ((flags & (FDF_DSYNC | FDF_RSYNC | FDF_SYNC)) != (host_fdflags(f->host) & (FDF_DSYNC | FDF_RSYNC | FDF_SYNC)))
        WASI_RETURN(WASI_ENOTSUP);
    int fl = fcntl(f->host, F_GETFL);
    if (fl < 0)
        WASI_RETURN(wasi_errno(errno));
    fl &= ~(O_APPEND | O_NONBLOCK);
    if (flags & FDF_APPEND) fl |= O_APPEND;
    if (flags & FDF_NONBLOCK) fl |= O_NONBLOCK;
    if (fcntl(f->host, F_SETFL, fl) != 0)
        WASI_RETURN(wasi_errno(errno));
    WASI_RETURN(WASI_ESUCCESS);
}

PHASE_WASI_FN(phase_fs_fd_fdstat_set_rights)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint64_t, base);
    WASI_ARG(uint64_t, inheriting);
    if (fd <= 2)
        WASI_RETURN(WASI_ENOTSUP);
    phase_fs_fd *f = lookup(call->job, fd);
    if (!f)
        WASI_RETURN(WASI_EBADF);
    if ((base & ~f->base) || (inheriting & ~f->inheriting))
        WASI_RETURN(WASI_ENOTCAPABLE);
    f->base = base;
    f->inheriting = inheriting;
    WASI_RETURN(WASI_ESUCCESS);
}

PHASE_WASI_FN(phase_fs_fd_filestat_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, buf);
    phase_job *job = call->job;
    uint8_t *out = guest(call, buf, 64);
    if (fd <= 2) {
        /* stdio: a character device of no size, as seen by the job (a pipe's details stay the host's) */
        if (!out)
            WASI_RETURN(WASI_EFAULT);
        memset(out, 0, 64);
        out[16] = FT_CHAR;
        wr64(out + 24, 1);
        WASI_RETURN(WASI_ESUCCESS);
    }
    uint32_t rc;
    phase_fs_fd *f = lookup_rights(job, fd, R_FD_FILESTAT_GET, &rc);
    if (!f)
        WASI_RETURN(rc);
    if (!out)
        WASI_RETURN(WASI_EFAULT);
    struct stat st;
    if (fstat(f->host, &st) != 0)
        WASI_RETURN(wasi_errno(errno));
    put_filestat(job, out, &st, f->root, f->path);
    WASI_RETURN(WASI_ESUCCESS);
}

PHASE_WASI_FN(phase_fs_fd_filestat_set_size)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint64_t, size);
    FD_ARG_OR_RETURN(f, fd, R_FD_FILESTAT_SET_SIZE, WASI_EINVAL);
    if (size > INT64_MAX)
        WASI_RETURN(WASI_EINVAL);
    struct stat st;
    int quota = f->filetype == FT_REG && counted(call->job, f->readonly);
    if (quota) {
        if (fstat(f->host, &st) != 0)
            WASI_RETURN(wasi_errno(errno));
        uint32_t rc = quota_grows(call->job, (uint64_t) st.st_size, size);
        if (rc != WASI_ESUCCESS)
            WASI_RETURN(rc);
    }
    if (ftruncate(f->host, (off_t) size) != 0)
        WASI_RETURN(wasi_errno(errno));
    if (quota)
        quota_resized(call->job, (uint64_t) st.st_size, size);
    WASI_RETURN(WASI_ESUCCESS);
}

PHASE_WASI_FN(phase_fs_fd_filestat_set_times)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint64_t, atim);
    WASI_ARG(uint64_t, mtim);
    WASI_ARG(uint32_t, flags);
    FD_ARG_OR_RETURN(f, fd, R_FD_FILESTAT_SET_TIMES, WASI_ENOTSUP);
    struct timespec ts[2];
    uint32_t rc;
    if ((rc = make_times(atim, mtim, flags, ts)) != WASI_ESUCCESS)
        WASI_RETURN(rc);
    if (utimensat(f->host, "", ts, AT_EMPTY_PATH) != 0)
        WASI_RETURN(wasi_errno(errno));
    WASI_RETURN(WASI_ESUCCESS);
}

PHASE_WASI_FN(phase_fs_fd_advise)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint64_t, offset);
    WASI_ARG(uint64_t, len);
    WASI_ARG(uint32_t, advice);
    FD_ARG_OR_RETURN(f, fd, R_FD_ADVISE, WASI_ESPIPE);
    static const int advices[6] = {POSIX_FADV_NORMAL, POSIX_FADV_SEQUENTIAL, POSIX_FADV_RANDOM,
                                   POSIX_FADV_WILLNEED, POSIX_FADV_DONTNEED, POSIX_FADV_NOREUSE};
    if (advice > 5 || offset > INT64_MAX || len > INT64_MAX)
        WASI_RETURN(WASI_EINVAL);
    if (f->filetype == FT_DIR)
        WASI_RETURN(WASI_EBADF);
    int e = posix_fadvise(f->host, (off_t) offset, (off_t) len, advices[advice]);
    WASI_RETURN(wasi_errno(e));
}

PHASE_WASI_FN(phase_fs_fd_allocate)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint64_t, offset);
    WASI_ARG(uint64_t, len);
    FD_ARG_OR_RETURN(f, fd, R_FD_ALLOCATE, WASI_ENOTSUP);
    if (offset > INT64_MAX || len > INT64_MAX || len == 0)
        WASI_RETURN(WASI_EINVAL);
    if (f->filetype == FT_DIR)
        WASI_RETURN(WASI_EBADF);
    struct stat st;
    int quota = f->filetype == FT_REG && counted(call->job, f->readonly);
    if (quota) {
        if (fstat(f->host, &st) != 0)
            WASI_RETURN(wasi_errno(errno));
        uint32_t rc = quota_grows(call->job, (uint64_t) st.st_size, offset + len);
        if (rc != WASI_ESUCCESS)
            WASI_RETURN(rc);
    }
    if (fallocate(f->host, 0, (off_t) offset, (off_t) len) != 0)
        WASI_RETURN(wasi_errno(errno));
    struct stat after;
    if (quota && fstat(f->host, &after) == 0)
        quota_resized(call->job, (uint64_t) st.st_size, (uint64_t) after.st_size);
    WASI_RETURN(WASI_ESUCCESS);
}

static uint32_t sync_fd(phase_job *job, uint32_t fd, uint64_t right, int data_only)
{
    if (fd <= 2)
        return WASI_EINVAL;
    uint32_t rc;
    phase_fs_fd *f = lookup_rights(job, fd, right, &rc);
    if (!f)
        return rc;
    if ((data_only ? fdatasync(f->host) : fsync(f->host)) != 0)
        return wasi_errno(errno);
    return WASI_ESUCCESS;
}

PHASE_WASI_FN(phase_fs_fd_sync)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_RETURN(sync_fd(call->job, fd, R_FD_SYNC, 0));
}

PHASE_WASI_FN(phase_fs_fd_datasync)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_RETURN(sync_fd(call->job, fd, R_FD_DATASYNC, 1));
}

uint32_t phase_fs_fd_close(phase_job *job, uint32_t fd)
{
    if (fd <= 2) {
        if (job->stdio[fd] < 0)
            return WASI_EBADF;
        job->stdio[fd] = -1;
        return WASI_ESUCCESS;
    }
    phase_fs_fd *f = slot_of(job, fd);
    if (!f)
        return WASI_EBADF;
    slot_release(job, f);
    return WASI_ESUCCESS;
}

PHASE_WASI_FN(phase_fs_fd_renumber)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, from);
    WASI_ARG(uint32_t, to);
    phase_job *job = call->job;
    /* Both must be open: a stdio fd holding its stream, or a table slot (a file, a directory or a stream). */
    int from_open = from <= 2 ? job->stdio[from] >= 0 : slot_of(job, from) != NULL;
    int to_open = to <= 2 ? job->stdio[to] >= 0 : slot_of(job, to) != NULL;
    if (!from_open || !to_open)
        WASI_RETURN(WASI_EBADF);
    if (from == to)
        WASI_RETURN(WASI_ESUCCESS);
    int stream = phase_fs_stream(job, from);
    if (to <= 2) {
        /* Fds 0-2 hold streams only: a file cannot become stdout (the job's output is its buffers). */
        if (stream < 0)
            WASI_RETURN(WASI_ENOTSUP);
        job->stdio[to] = (int8_t) stream;
    } else {
        phase_fs_fd *dst = slot_of(job, to);
        slot_release(job, dst);
        if (from <= 2) {
            dst->host = HOST_STREAM;
            dst->stream = (int8_t) stream;
        } else {
            phase_fs_fd *src = slot_of(job, from);
            *dst = *src;
            memset(src, 0, sizeof *src);
            src->host = -1;
            src->preopen = -1;
            WASI_RETURN(WASI_ESUCCESS);
        }
    }
    if (from <= 2)
        job->stdio[from] = -1;
    else
        slot_clear(slot_of(job, from));
    WASI_RETURN(WASI_ESUCCESS);
}

uint32_t phase_fs_prestat_get(phase_wasi_call *call, uint32_t fd, uint32_t out)
{
    phase_job *job = call->job;
    phase_fs_fd *f = lookup(job, fd);
    if (!f || f->preopen < 0) {
        if (job->spec->npreopens == 0)
            job->result->fs_unavailable = 1;
        return WASI_EBADF;
    }
    uint8_t *p = guest(call, out, 8);
    if (!p)
        return WASI_EFAULT;
    memset(p, 0, 8);
    wr32(p + 4, (uint32_t) strlen(job->spec->preopens[f->preopen].guest));
    return WASI_ESUCCESS;
}

uint32_t phase_fs_prestat_dir_name(phase_wasi_call *call, uint32_t fd, uint32_t path, uint32_t len)
{
    phase_job *job = call->job;
    phase_fs_fd *f = lookup(job, fd);
    if (!f || f->preopen < 0)
        return WASI_EBADF;
    const char *name = job->spec->preopens[f->preopen].guest;
    size_t n = strlen(name);
    if (len < n)
        return WASI_ENAMETOOLONG;
    uint8_t *p = guest(call, path, n);
    if (!p)
        return WASI_EFAULT;
    memcpy(p, name, n);
    return WASI_ESUCCESS;
}

uint32_t phase_fs_poll_ready(phase_job *job, uint32_t fd)
{
    return lookup(job, fd) ? WASI_ESUCCESS : WASI_EBADF;
}

/* ---- fd_readdir ---------------------------------------------------------------------------------- */

/* Entries in name order: a bottom-up merge sort (glibc's qsort may call sysinfo, which the sandbox forbids). */
static int sort_entries(dir_entry *e, uint32_t n)
{
    if (n < 2)
        return 0;
    dir_entry *tmp = malloc((size_t) n * sizeof *tmp);
    if (!tmp)
        return -1;
    dir_entry *src = e, *dst = tmp;
    for (uint32_t width = 1; width < n; width *= 2) {
        for (uint32_t lo = 0; lo < n; lo += 2 * width) {
            uint32_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            uint32_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = strcmp(src[i].name, src[j].name) <= 0 ? src[i++] : src[j++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        dir_entry *t = src;
        src = dst;
        dst = t;
    }
    if (src != e)
        memcpy(e, src, (size_t) n * sizeof *e);
    free(tmp);
    return 0;
}

static void listing_free(phase_fs_fd *f)
{
    for (uint32_t i = 0; i < f->nentries; i++)
        free(f->entries[i].name);
    free(f->entries);
    f->entries = NULL;
    f->nentries = 0;
}

/* Read the whole directory (getdents64 from its start), in name order. */
static uint32_t listing_take(phase_job *job, phase_fs_fd *f)
{
    listing_free(f);
    if (lseek(f->host, 0, SEEK_SET) < 0)
        return wasi_errno(errno);
    char buf[8192];
    uint32_t cap = 0;
    uint64_t bytes = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, f->host, buf, sizeof buf);
        if (n < 0)
            return wasi_errno(errno);
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct dirent64 *d = (struct dirent64 *) (buf + off);
            off += d->d_reclen;
            size_t namelen = strlen(d->d_name);
            bytes += 24 + namelen + sizeof(dir_entry);
            if (bytes > DIR_LISTING_MAX_BYTES)
                return WASI_ENOMEM;
            if (f->nentries == cap) {
                uint32_t grown = cap ? cap * 2 : 32;
                dir_entry *e = realloc(f->entries, grown * sizeof *e);
                if (!e)
                    return WASI_ENOMEM;
                f->entries = e;
                cap = grown;
            }
            dir_entry *e = &f->entries[f->nentries];
            if (!(e->name = strdup(d->d_name)))
                return WASI_ENOMEM;
            e->namelen = (uint32_t) namelen;
            e->ino = d->d_ino;
            switch (d->d_type) {
            case DT_DIR: e->type = FT_DIR; break;
            case DT_REG: e->type = FT_REG; break;
            case DT_LNK: e->type = FT_SYMLINK; break;
            case DT_CHR: e->type = FT_CHAR; break;
            case DT_BLK: e->type = FT_BLOCK; break;
            case DT_SOCK: e->type = FT_SOCK_STREAM; break;
            case DT_UNKNOWN: {
                struct stat st;
                e->type = fstatat(f->host, d->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? filetype_of(st.st_mode)
                                                                                     : FT_UNKNOWN;
                break;
            }
            default: e->type = FT_UNKNOWN;
            }
            f->nentries++;
        }
    }
    if (sort_entries(f->entries, f->nentries) != 0)
        return WASI_ENOMEM;
    if (job->spec->deterministic) {
        for (uint32_t i = 0; i < f->nentries; i++) {
            char *p = join_normalised(f->path ? f->path : "", f->entries[i].name);
            f->entries[i].ino = det_ino(f->root, p ? p : "");
            free(p);
        }
    }
    return WASI_ESUCCESS;
}

PHASE_WASI_FN(phase_fs_fd_readdir)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, buf);
    WASI_ARG(uint32_t, buf_len);
    WASI_ARG(uint64_t, cookie);
    WASI_ARG(uint32_t, bufused_ptr);
    phase_job *job = call->job;
    uint32_t rc;
    phase_fs_fd *f = fd_arg(job, fd, R_FD_READDIR, WASI_ENOTDIR, &rc);
    if (!f)
        WASI_RETURN(rc);
    if (f->filetype != FT_DIR)
        WASI_RETURN(WASI_ENOTDIR);
    if (!guest(call, buf, buf_len) || !guest(call, bufused_ptr, 4))
        WASI_RETURN(WASI_EFAULT);
    if (cookie == 0 || !f->entries) {
        if ((rc = listing_take(job, f)) != WASI_ESUCCESS) {
            listing_free(f);
            WASI_RETURN(rc);
        }
    }
    uint8_t *out = guest(call, buf, buf_len);
    uint32_t used = 0;
    for (uint64_t i = cookie; i < f->nentries && used < buf_len; i++) {
        dir_entry *e = &f->entries[i];
        uint8_t head[24];
        memset(head, 0, sizeof head);
        wr64(head, i + 1);
        wr64(head + 8, e->ino);
        wr32(head + 16, e->namelen);
        head[20] = e->type;
        uint32_t take = buf_len - used < 24 ? buf_len - used : 24;
        memcpy(out + used, head, take);
        used += take;
        take = buf_len - used < e->namelen ? buf_len - used : e->namelen;
        memcpy(out + used, e->name, take);
        used += take;
    }
    wr32(guest(call, bufused_ptr, 4), used);
    charge(call, used);
    WASI_RETURN(WASI_ESUCCESS);
}

/* ---- path_* ---------------------------------------------------------------------------------------- */

/* The directory descriptor `fd` with `rights`, and the guest's path copied into path[PATH_MAX]. */
static phase_fs_fd *dir_and_path(phase_wasi_call *call, uint32_t fd, uint64_t rights, uint32_t ptr,
                                 uint32_t len, char *path, uint32_t *rc)
{
    phase_job *job = call->job;
    if (job->spec->npreopens == 0)
        job->result->fs_unavailable = 1;
    phase_fs_fd *f = lookup(job, fd);
    if (!f) {
        *rc = WASI_EBADF;
        return NULL;
    }
    if (f->filetype != FT_DIR) {
        *rc = WASI_ENOTDIR;
        return NULL;
    }
    if ((f->base & rights) != rights) {
        *rc = f->readonly && (rights & RIGHTS_MUTATE) ? WASI_EROFS : WASI_ENOTCAPABLE;
        return NULL;
    }
    if ((*rc = guest_path(call, ptr, len, path)) != WASI_ESUCCESS)
        return NULL;
    return f;
}

PHASE_WASI_FN(phase_fs_path_open)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, dirflags);
    WASI_ARG(uint32_t, path_ptr);
    WASI_ARG(uint32_t, path_len);
    WASI_ARG(uint32_t, oflags);
    WASI_ARG(uint64_t, want_base);
    WASI_ARG(uint64_t, want_inheriting);
    WASI_ARG(uint32_t, fdflags);
    WASI_ARG(uint32_t, fd_ptr);
    phase_job *job = call->job;
    char path[PATH_MAX];
    uint32_t rc;
    uint64_t need = R_PATH_OPEN | ((oflags & OF_CREAT) ? R_PATH_CREATE_FILE : 0);
    phase_fs_fd *dir = dir_and_path(call, fd, need, path_ptr, path_len, path, &rc);
    if (!dir)
        WASI_RETURN(rc);
    if (!guest(call, fd_ptr, 4))
        WASI_RETURN(WASI_EFAULT);
    if (oflags & ~(uint32_t) (OF_CREAT | OF_DIRECTORY | OF_EXCL | OF_TRUNC))
        WASI_RETURN(WASI_EINVAL);
    if (fdflags & ~(uint32_t) (FDF_APPEND | FDF_DSYNC | FDF_NONBLOCK | FDF_RSYNC | FDF_SYNC))
        WASI_RETURN(WASI_EINVAL);
    if (dir->readonly && ((oflags & (OF_CREAT | OF_TRUNC)) || (fdflags & FDF_APPEND)))
        WASI_RETURN(WASI_EROFS);

    uint64_t base = want_base & dir->inheriting;
    uint64_t inheriting = want_inheriting & dir->inheriting;
    int rd = (base & RIGHTS_NEED_READ) != 0;
    int wr = (base & RIGHTS_NEED_WRITE) != 0 || (oflags & OF_TRUNC) || (fdflags & FDF_APPEND);
    if (dir->readonly)
        wr = 0;
    uint64_t flags = wr ? (rd ? O_RDWR : O_WRONLY) : O_RDONLY;
    if (oflags & OF_CREAT) flags |= O_CREAT;
    if (oflags & OF_DIRECTORY) flags |= O_DIRECTORY;
    if (oflags & OF_EXCL) flags |= O_EXCL;
    if (oflags & OF_TRUNC) flags |= O_TRUNC;
    if (fdflags & FDF_APPEND) flags |= O_APPEND;
    if (fdflags & FDF_DSYNC) flags |= O_DSYNC;
    if (fdflags & FDF_NONBLOCK) flags |= O_NONBLOCK;
    if (fdflags & (FDF_SYNC | FDF_RSYNC)) flags |= O_SYNC;
    if (!(dirflags & LOOKUP_SYMLINK_FOLLOW))
        flags |= O_NOFOLLOW;
    if ((oflags & OF_DIRECTORY) && (oflags & (OF_CREAT | OF_TRUNC)))
        WASI_RETURN(WASI_EINVAL);

    /* slot_alloc may move the table: keep what is needed of dir first. */
    int dir_host = dir->host, readonly = dir->readonly;
    uint32_t root = dir->root;
    const char *dir_path = dir->path;
    /* Quota: a name the open creates is a new entry; a file it truncates gives its blocks back. */
    int quota = counted(job, readonly) && (oflags & (OF_CREAT | OF_TRUNC)), creates = 0;
    struct stat before;
    memset(&before, 0, sizeof before);
    if (quota) {
        int probe = openat_beneath(dir_host, path, O_PATH | (flags & O_NOFOLLOW), 0);
        if (probe >= 0) {
            if (fstat(probe, &before) != 0)
                before.st_mode = 0;
            close(probe);
        } else if (errno == ENOENT && (oflags & OF_CREAT)) {
            /* A missing parent is ENOENT whatever the quota says. */
            char parent[PATH_MAX];
            split_path sp;
            memcpy(parent, path, strlen(path) + 1);
            rc = split_open(dir_host, parent, &sp);
            split_close(&sp);
            if (rc != WASI_ESUCCESS)
                WASI_RETURN(rc);
            creates = 1;
            if ((rc = quota_fits(job, 0, 1)) != WASI_ESUCCESS)
                WASI_RETURN(rc);
        }
    }
    int64_t slot = slot_alloc(job);
    if (slot < 0)
        WASI_RETURN(WASI_EMFILE);
    int host = openat_beneath(dir_host, path, flags, 0666);
    if (host < 0)
        WASI_RETURN(errno == ENOSYS ? WASI_ENOSYS : wasi_errno(errno));
    struct stat st;
    if (fstat(host, &st) != 0) {
        rc = wasi_errno(errno);
        close(host);
        WASI_RETURN(rc);
    }
    if (creates)
        quota_add(job, 0, 1);
    else if (quota && S_ISREG(before.st_mode) && (oflags & OF_TRUNC))
        quota_resized(job, (uint64_t) before.st_size, (uint64_t) st.st_size);
    phase_fs_fd *f = &TABLE(job)[slot];
    f->host = host;
    f->filetype = filetype_of(st.st_mode);
    f->readonly = (uint8_t) readonly;
    f->root = root;
    f->preopen = -1;
    uint64_t kind = f->filetype == FT_DIR ? RIGHTS_DIR : RIGHTS_FILE;
    if (!rd)
        kind &= ~RIGHTS_NEED_READ;
    if (!wr)
        kind &= ~(R_FD_WRITE | R_FD_ALLOCATE | R_FD_FILESTAT_SET_SIZE);
    f->base = base & kind;
    f->inheriting = inheriting;
    if (job->spec->deterministic)
        f->path = join_normalised(dir_path ? dir_path : "", path);
    wr32(guest(call, fd_ptr, 4), (uint32_t) slot + 3);
    WASI_RETURN(WASI_ESUCCESS);
}

/* In a host function: `dir` is the directory `fd` names with `right` and `path` (a buffer declared here) the guest's
 * path at ptr/len, or the function returns why; `rc` is declared for the rest of the function. */
#define DIR_AND_PATH_OR_RETURN(dir, path, rc, fd, right, ptr, len)                \
    char path[PATH_MAX];                                                          \
    uint32_t rc;                                                                  \
    phase_fs_fd *dir = dir_and_path(call, (fd), (right), (ptr), (len), path, &rc); \
    if (!dir)                                                                     \
        WASI_RETURN(rc)

/* mkdir (target NULL) or symlink at sp beneath dir, within the quota: one entry and `bytes`. */
static uint32_t new_entry(phase_job *job, const phase_fs_fd *dir, const split_path *sp, const char *target,
                          uint64_t bytes)
{
    int quota = counted(job, dir->readonly);
    uint32_t rc;
    struct stat st;
    if (quota && fstatat(sp->parent, sp->name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return WASI_EEXIST;   /* as without a quota, and not a refusal at the bound */
    if (quota && (rc = quota_fits(job, bytes, 1)) != WASI_ESUCCESS)
        return rc;
    int ok = target ? symlinkat(target, sp->parent, sp->name) == 0 : mkdirat(sp->parent, sp->name, 0777) == 0;
    if (!ok)
        return wasi_errno(errno);
    if (quota)
        quota_add(job, (int64_t) bytes, 1);
    return WASI_ESUCCESS;
}

PHASE_WASI_FN(phase_fs_path_create_directory)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, path_ptr);
    WASI_ARG(uint32_t, path_len);
    DIR_AND_PATH_OR_RETURN(dir, path, rc, fd, R_PATH_CREATE_DIRECTORY, path_ptr, path_len);
    split_path sp;
    if ((rc = split_open(dir->host, path, &sp)) == WASI_ESUCCESS)
        rc = sp.dots ? WASI_EEXIST : new_entry(call->job, dir, &sp, NULL, QUOTA_BLOCK);
    split_close(&sp);
    WASI_RETURN(rc);
}

static uint32_t remove_entry(phase_wasi_call *call, uint32_t fd, uint32_t path_ptr, uint32_t path_len,
                             int is_dir)
{
    char path[PATH_MAX];
    uint32_t rc;
    phase_fs_fd *dir = dir_and_path(call, fd, is_dir ? R_PATH_REMOVE_DIRECTORY : R_PATH_UNLINK_FILE,
                                    path_ptr, path_len, path, &rc);
    if (!dir)
        return rc;
    split_path sp;
    if ((rc = split_open(dir->host, path, &sp)) == WASI_ESUCCESS) {
        struct stat st;
        int quota = counted(call->job, dir->readonly) && fstatat(sp.parent, sp.name, &st, AT_SYMLINK_NOFOLLOW) == 0;
        if (sp.dots)
            rc = is_dir ? WASI_EBUSY : WASI_EISDIR;
        else if (unlinkat(sp.parent, sp.name, is_dir ? AT_REMOVEDIR : 0) != 0)
            rc = wasi_errno(errno);
        else if (quota)
            quota_removed(call->job, &st);
    }
    split_close(&sp);
    return rc;
}

PHASE_WASI_FN(phase_fs_path_remove_directory)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, path_ptr);
    WASI_ARG(uint32_t, path_len);
    WASI_RETURN(remove_entry(call, fd, path_ptr, path_len, 1));
}

PHASE_WASI_FN(phase_fs_path_unlink_file)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, path_ptr);
    WASI_ARG(uint32_t, path_len);
    WASI_RETURN(remove_entry(call, fd, path_ptr, path_len, 0));
}

/* The entry itself as an O_PATH fd beneath dir (following a final symlink or not). */
static int open_entry(phase_fs_fd *dir, const char *path, uint32_t lookupflags, uint32_t *rc)
{
    uint64_t flags = O_PATH | ((lookupflags & LOOKUP_SYMLINK_FOLLOW) ? 0 : O_NOFOLLOW);
    int fd = openat_beneath(dir->host, path, flags, 0);
    if (fd < 0)
        *rc = wasi_errno(errno);
    return fd;
}

PHASE_WASI_FN(phase_fs_path_filestat_get)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, lookupflags);
    WASI_ARG(uint32_t, path_ptr);
    WASI_ARG(uint32_t, path_len);
    WASI_ARG(uint32_t, buf);
    phase_job *job = call->job;
    DIR_AND_PATH_OR_RETURN(dir, path, rc, fd, R_PATH_FILESTAT_GET, path_ptr, path_len);
    if (!guest(call, buf, 64))
        WASI_RETURN(WASI_EFAULT);
    int e = open_entry(dir, path, lookupflags, &rc);
    if (e < 0)
        WASI_RETURN(rc);
    struct stat st;
    int ok = fstat(e, &st) == 0;
    rc = ok ? WASI_ESUCCESS : wasi_errno(errno);
    close(e);
    if (ok) {
        char *p = job->spec->deterministic ? join_normalised(dir->path ? dir->path : "", path) : NULL;
        put_filestat(job, guest(call, buf, 64), &st, dir->root, p);
        free(p);
    }
    WASI_RETURN(rc);
}

PHASE_WASI_FN(phase_fs_path_filestat_set_times)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, lookupflags);
    WASI_ARG(uint32_t, path_ptr);
    WASI_ARG(uint32_t, path_len);
    WASI_ARG(uint64_t, atim);
    WASI_ARG(uint64_t, mtim);
    WASI_ARG(uint32_t, flags);
    DIR_AND_PATH_OR_RETURN(dir, path, rc, fd, R_PATH_FILESTAT_SET_TIMES, path_ptr, path_len);
    struct timespec ts[2];
    if ((rc = make_times(atim, mtim, flags, ts)) != WASI_ESUCCESS)
        WASI_RETURN(rc);
    int e = open_entry(dir, path, lookupflags, &rc);
    if (e < 0)
        WASI_RETURN(rc);
    rc = utimensat(e, "", ts, AT_EMPTY_PATH) == 0 ? WASI_ESUCCESS : wasi_errno(errno);
    close(e);
    WASI_RETURN(rc);
}

PHASE_WASI_FN(phase_fs_path_readlink)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, path_ptr);
    WASI_ARG(uint32_t, path_len);
    WASI_ARG(uint32_t, buf);
    WASI_ARG(uint32_t, buf_len);
    WASI_ARG(uint32_t, bufused_ptr);
    DIR_AND_PATH_OR_RETURN(dir, path, rc, fd, R_PATH_READLINK, path_ptr, path_len);
    if (!guest(call, buf, buf_len) || !guest(call, bufused_ptr, 4))
        WASI_RETURN(WASI_EFAULT);
    split_path sp;
    char target[PATH_MAX];
    ssize_t n = -1;
    if ((rc = split_open(dir->host, path, &sp)) == WASI_ESUCCESS) {
        if (sp.dots)
            rc = WASI_EINVAL;
        else if ((n = readlinkat(sp.parent, sp.name, target, sizeof target)) < 0)
            rc = wasi_errno(errno);
    }
    split_close(&sp);
    if (rc != WASI_ESUCCESS)
        WASI_RETURN(rc);
    uint32_t take = (uint64_t) n < buf_len ? (uint32_t) n : buf_len;
    memcpy(guest(call, buf, buf_len), target, take);
    wr32(guest(call, bufused_ptr, 4), take);
    WASI_RETURN(WASI_ESUCCESS);
}

PHASE_WASI_FN(phase_fs_path_symlink)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, old_ptr);
    WASI_ARG(uint32_t, old_len);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, new_ptr);
    WASI_ARG(uint32_t, new_len);
    char target[PATH_MAX], path[PATH_MAX];
    uint32_t rc;
    if ((rc = guest_path(call, old_ptr, old_len, target)) != WASI_ESUCCESS)
        WASI_RETURN(rc);
    phase_fs_fd *dir = dir_and_path(call, fd, R_PATH_SYMLINK, new_ptr, new_len, path, &rc);
    if (!dir)
        WASI_RETURN(rc);
    /* An absolute target could never resolve beneath a preopen: refused, as wasmtime does. Any other text is
     * the guest's business; following it later is resolved beneath like any path. */
    if (target[0] == '/')
        WASI_RETURN(WASI_EPERM);
    split_path sp;
    if ((rc = split_open(dir->host, path, &sp)) == WASI_ESUCCESS)
        rc = sp.dots ? WASI_EEXIST : new_entry(call->job, dir, &sp, target, QUOTA_BLOCK);
    split_close(&sp);
    WASI_RETURN(rc);
}

/* Two entries for rename and link: both parents beneath their own directory descriptors. */
static uint32_t two_entries(phase_wasi_call *call, uint32_t fd1, uint64_t r1, uint32_t p1, uint32_t l1,
                            uint32_t fd2, uint64_t r2, uint32_t p2, uint32_t l2, char *a, char *b, split_path *s1,
                            split_path *s2)
{
    uint32_t rc;
    s1->parent = s2->parent = -1;
    s1->owned = s2->owned = 0;
    phase_fs_fd *d1 = dir_and_path(call, fd1, r1, p1, l1, a, &rc);
    if (!d1)
        return rc;
    int h1 = d1->host;
    phase_fs_fd *d2 = dir_and_path(call, fd2, r2, p2, l2, b, &rc);
    if (!d2)
        return rc;
    if ((rc = split_open(h1, a, s1)) != WASI_ESUCCESS)
        return rc;
    return split_open(d2->host, b, s2);
}

PHASE_WASI_FN(phase_fs_path_rename)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, old_ptr);
    WASI_ARG(uint32_t, old_len);
    WASI_ARG(uint32_t, new_fd);
    WASI_ARG(uint32_t, new_ptr);
    WASI_ARG(uint32_t, new_len);
    char a[PATH_MAX], b[PATH_MAX];
    split_path s1, s2;
    uint32_t rc = two_entries(call, fd, R_PATH_RENAME_SOURCE, old_ptr, old_len, new_fd,
                              R_PATH_RENAME_TARGET, new_ptr, new_len, a, b, &s1, &s2);
    if (rc == WASI_ESUCCESS) {
        /* Quota: a target it replaces goes (unless both names are one file, when rename does nothing). */
        struct stat from, to;
        int replaces = counted(call->job, 0) && fstatat(s2.parent, s2.name, &to, AT_SYMLINK_NOFOLLOW) == 0
                       && fstatat(s1.parent, s1.name, &from, AT_SYMLINK_NOFOLLOW) == 0
                       && !(from.st_dev == to.st_dev && from.st_ino == to.st_ino);
        if (s1.dots || s2.dots)
            rc = WASI_EBUSY;
        else if (renameat(s1.parent, s1.name, s2.parent, s2.name) != 0)
            rc = wasi_errno(errno);
        else if (replaces)
            quota_removed(call->job, &to);
    }
    split_close(&s1);
    split_close(&s2);
    WASI_RETURN(rc);
}

PHASE_WASI_FN(phase_fs_path_link)
{
    WASI_RET_TYPE(uint32_t);
    WASI_ARG(uint32_t, fd);
    WASI_ARG(uint32_t, old_flags);
    WASI_ARG(uint32_t, old_ptr);
    WASI_ARG(uint32_t, old_len);
    WASI_ARG(uint32_t, new_fd);
    WASI_ARG(uint32_t, new_ptr);
    WASI_ARG(uint32_t, new_len);
    char a[PATH_MAX], b[PATH_MAX];
    split_path s1, s2;
    /* Following a symlink at the source would need linkat(AT_EMPTY_PATH), which takes a capability. */
    if (old_flags & LOOKUP_SYMLINK_FOLLOW)
        WASI_RETURN(WASI_EINVAL);
    uint32_t rc = two_entries(call, fd, R_PATH_LINK_SOURCE, old_ptr, old_len, new_fd, R_PATH_LINK_TARGET,
                              new_ptr, new_len, a, b, &s1, &s2);
    if (rc == WASI_ESUCCESS) {
        if (s2.dots)
            rc = WASI_EEXIST;
        else if (s1.dots)
            rc = WASI_EPERM;
        else {
            int quota = counted(call->job, 0);   /* both directories are writable: they have the link rights */
            if (!quota || (rc = quota_fits(call->job, 0, 1)) == WASI_ESUCCESS) {
                if (linkat(s1.parent, s1.name, s2.parent, s2.name, 0) != 0)
                    rc = wasi_errno(errno);
                else if (quota)
                    quota_add(call->job, 0, 1);
            }
        }
    }
    split_close(&s1);
    split_close(&s2);
    WASI_RETURN(rc);
}
