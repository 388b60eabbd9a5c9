/* Module arenas: a cached module built in a sealed memfd mapped copy-on-write, so that forking a worker copies no
 * page-table entries for it (phase_arena.c; docs/SANDBOX.md, "Memory"). Used by the fork server only. */
#ifndef PHASE_ARENA_H
#define PHASE_ARENA_H

#include <stddef.h>

typedef struct phase_arena phase_arena;

/* Route wasm3's allocations (and phase_arena_calloc's) into a new arena of up to `reserve` bytes (address space;
 * only what is written takes memory) until phase_arena_finish. NULL if one is open or it cannot be made: the
 * allocations then come from the heap, as without arenas. */
phase_arena *phase_arena_open(size_t reserve);
/* Stop routing; map what was used copy-on-write and seal it. 0, or -1 (the arena stays usable but writable
 * through its shared mapping: free what was built in it). */
int phase_arena_finish(phase_arena *arena);
/* Unmap an arena with everything built in it (NULL: nothing). */
void phase_arena_free(phase_arena *arena);
/* Bytes handed out by an arena. */
size_t phase_arena_bytes(const phase_arena *arena);
/* In a compile helper: unmap every arena but `keep` (NULL: all). Not in workers: munmap costs ~5 us per mapping. */
void phase_arena_keep_only(const phase_arena *keep);

/* calloc/free/realloc that use the open arena (the heap when none is open); free and realloc accept both. */
void *phase_arena_calloc(size_t n);
void phase_arena_release(void *p);
void *phase_arena_realloc(void *p, size_t n, size_t old);

#endif
