/* Module arenas: where the sandbox's fork server builds a cached module, so that forking a worker costs nothing
 * for it.
 *
 * fork() copies the page-table entries of every private anonymous page (and exit() tears them down again), but
 * none of a file mapping that has no anonymous pages: those are faulted in on demand. A cached module's parsed
 * code, wasm3's compiled code and its prepared instance are ~6x its bytes (64 MiB for an 11 MB module); on the
 * heap they made every worker of every module pay ~5 ms of fork and exit. Built in an arena instead, they live
 * in a memfd that the server maps copy-on-write (MAP_PRIVATE) once the module is ready, and never writes again:
 * a worker of this module faults in (and copies, where its job writes) only the pages it touches, a worker of
 * another module never touches it, and the memfd is sealed against writing, so no process can change what later
 * workers inherit.
 *
 * Allocation is a bump pointer (the last block can shrink, grow or be freed in place); freeing any other block
 * is a no-op until the whole arena goes with its module. Only the fork server opens arenas (it is
 * single-threaded); elsewhere every call falls through to calloc/realloc/free.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "phase_arena.h"

#define ARENA_ALIGN 16u
#define ARENAS_MAX 256

struct phase_arena {
    uint8_t *base;
    size_t reserved;   /* bytes mapped while it is open */
    size_t used;       /* bump offset */
    size_t last;       /* offset of the last block (for in-place realloc/free) */
    size_t mapped;     /* bytes mapped once finished */
    int fd;            /* the memfd while open */
};

static phase_arena *open_arena;
static phase_arena *arenas[ARENAS_MAX];   /* by base address: wasm3 frees often, and each free asks owned() */
static unsigned narenas;

static size_t page_round(size_t n)
{
    size_t page = (size_t) sysconf(_SC_PAGESIZE);
    return (n + page - 1) / page * page;
}

static int owned(const void *p)
{
    const uint8_t *q = p;
    unsigned lo = 0, hi = narenas;   /* the last arena whose base is <= q */
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (arenas[mid]->base <= q)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && q < arenas[lo - 1]->base + arenas[lo - 1]->mapped;
}

static void remember(phase_arena *a)
{
    unsigned i = narenas++;
    for (; i > 0 && arenas[i - 1]->base > a->base; i--)
        arenas[i] = arenas[i - 1];
    arenas[i] = a;
}

static void forget(phase_arena *a)
{
    unsigned i = 0;
    while (i < narenas && arenas[i] != a)
        i++;
    if (i == narenas)
        return;
    narenas--;
    memmove(arenas + i, arenas + i + 1, (narenas - i) * sizeof arenas[0]);
}

phase_arena *phase_arena_open(size_t reserve)
{
    if (open_arena || narenas == ARENAS_MAX || reserve == 0)
        return NULL;
    phase_arena *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->reserved = page_round(reserve);
    a->fd = memfd_create("phase-module", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (a->fd < 0 || ftruncate(a->fd, (off_t) a->reserved) != 0)
        goto fail;
    /* Sparse: only the pages written take memory. */
    a->base = mmap(NULL, a->reserved, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, a->fd, 0);
    if (a->base == MAP_FAILED)
        goto fail;
    a->mapped = a->reserved;
    remember(a);
    open_arena = a;
    return a;
fail:
    if (a->fd >= 0)
        close(a->fd);
    free(a);
    return NULL;
}

/* Blocks the server never wrote (wasm3's value stack: 512 KiB per module) are holes in the file. A worker's first
 * write to a hole of a private file mapping would make the file allocate the page and then copy it; fresh private
 * anonymous memory instead gives it a zero page, as before arenas, and fork() copies nothing of it either (no page
 * of it is ever touched in the server). Holes below HOLE_MIN stay in the file (fewer mappings). */
#define HOLE_MIN (64u << 10)

static void anonymous_holes(phase_arena *a, size_t size)
{
    off_t hole = lseek(a->fd, 0, SEEK_HOLE);
    while (hole >= 0 && (size_t) hole < size) {
        off_t data = lseek(a->fd, hole, SEEK_DATA);
        size_t end = data < 0 ? size : (size_t) data;   /* ENXIO: a hole to the end */
        size_t from = page_round((size_t) hole);
        if (end > from && end - from >= HOLE_MIN)
            (void) mmap(a->base + from, end - from, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        if (data < 0)
            break;
        hole = lseek(a->fd, data, SEEK_HOLE);
    }
}

int phase_arena_finish(phase_arena *a)
{
    if (!a || a != open_arena)
        return -1;
    open_arena = NULL;
    size_t size = page_round(a->used ? a->used : 1);
    /* Copy-on-write over the same addresses (the module's pointers stay valid), replacing the writable shared
     * mapping in one step; then the file is cut to what was used and sealed: nobody can write it again. */
    void *p = mmap(a->base, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, a->fd, 0);
    int rc = p == a->base ? 0 : -1;
    if (rc == 0 && size < a->reserved)
        munmap(a->base + size, a->reserved - size);
    a->mapped = rc == 0 ? size : a->reserved;
    if (rc == 0) {
        /* The private mapping is what protects the server's copy (and no descriptor is left): the seals are a second
         * lock, so a kernel that refuses them (or the cut) does not cost the module its place in the cache. */
        if (ftruncate(a->fd, (off_t) size) == 0)
            (void) fcntl(a->fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
        anonymous_holes(a, size);
    }
    close(a->fd);
    a->fd = -1;
    return rc;
}

void phase_arena_free(phase_arena *a)
{
    if (!a)
        return;
    if (a == open_arena) {
        open_arena = NULL;
        close(a->fd);
    }
    munmap(a->base, a->mapped);
    forget(a);
    free(a);
}

size_t phase_arena_bytes(const phase_arena *a)
{
    return a ? a->used : 0;
}

void phase_arena_keep_only(const phase_arena *keep)
{
    for (unsigned i = 0; i < narenas;) {
        phase_arena *a = arenas[i];
        if (a == keep) {
            i++;
            continue;
        }
        munmap(a->base, a->mapped);
        forget(a);   /* the struct stays (the process ends with its job) */
    }
}

void *phase_arena_calloc(size_t n)
{
    phase_arena *a = open_arena;
    size_t start = a ? (a->used + ARENA_ALIGN - 1) & ~(size_t) (ARENA_ALIGN - 1) : 0;
    if (!a || n > a->reserved || start > a->reserved - n)
        return calloc(n ? n : 1, 1);   /* no arena, or full: the heap, as before */
    a->last = start;
    a->used = start + n;
    return a->base + start;   /* never used before: zero */
}

void phase_arena_release(void *p)
{
    if (!p)
        return;
    phase_arena *a = open_arena;
    if (a && (uint8_t *) p == a->base + a->last && a->last < a->used) {
        /* the last block: give it back (zeroed, since the arena's blocks are handed out as zero) */
        memset(p, 0, a->used - a->last);
        a->used = a->last;
        return;
    }
    if (!owned(p))
        free(p);
}

void *phase_arena_realloc(void *p, size_t n, size_t old)
{
    phase_arena *a = open_arena;
    if (!p)
        return phase_arena_calloc(n);
    if (!owned(p))
        return realloc(p, n);
    if (a && (uint8_t *) p == a->base + a->last && n <= a->reserved - a->last) {
        /* the last block grows or shrinks in place */
        if (a->last + n < a->used)
            memset(a->base + a->last + n, 0, a->used - a->last - n);
        a->used = a->last + n;
        return p;
    }
    void *q = phase_arena_calloc(n);
    if (q)
        memcpy(q, p, old < n ? old : n);
    return q;
}

/* wasm3's allocator (csrc/wasm3-patches/0010-external-allocator.patch). */
void *m3_ExternalCalloc(size_t n);
void m3_ExternalFree(void *p);
void *m3_ExternalRealloc(void *p, size_t n, size_t old);

void *m3_ExternalCalloc(size_t n)
{
    return phase_arena_calloc(n);
}

void m3_ExternalFree(void *p)
{
    phase_arena_release(p);
}

void *m3_ExternalRealloc(void *p, size_t n, size_t old)
{
    return phase_arena_realloc(p, n, old);
}
