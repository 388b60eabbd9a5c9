/* Joining two connected stream sockets: the byte copy under every relay hop (pyphase/net/relay.py, socks.py).
 * It runs with the GIL released, so a hop costs one thread wake-up per message and never waits for the
 * interpreter of a busy process. */
#ifndef PHASE_SPLICE_H
#define PHASE_SPLICE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    PHASE_SPLICE_CLOSED = 0, /* either end closed, failed or was shut down (how a caller stops a splice) */
    PHASE_SPLICE_BYTES = 1,  /* more than max_bytes would have been carried */
    PHASE_SPLICE_TIME = 2,   /* timeout_ms passed */
    PHASE_SPLICE_ERROR = 3   /* the splice itself could not run (errno says why: no memory, bad descriptor) */
} phase_splice_end;

/* Copy bytes a -> b and b -> a until one of the ends above; *carried counts both directions (bytes read).
 * max_bytes 0: no byte limit; timeout_ms < 0: no time limit. Makes both descriptors non-blocking and
 * leaves them open: the caller shuts down and closes them. */
phase_splice_end phase_splice(int a, int b, uint64_t max_bytes, int64_t timeout_ms, uint64_t *carried);

#ifdef __cplusplus
}
#endif

#endif
