/* Joining two connected stream sockets (phase_splice.h). One buffer per direction: a direction reads only
 * when its buffer is empty, so a slow end stops the other (memory stays 2 x PHASE_SPLICE_CHUNK). */
#include "phase_splice.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#define PHASE_SPLICE_CHUNK (64 * 1024)

typedef struct {
    int from, to;
    char *buf;
    size_t len, off; /* bytes waiting in buf: [off, len) */
} direction;

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Send what waits in d. 0: sent or would block; -1: the receiving end is gone. */
static int flush(direction *d) {
    while (d->off < d->len) {
        ssize_t n = send(d->to, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        d->off += (size_t)n;
    }
    d->off = d->len = 0;
    return 0;
}

/* Read into d's empty buffer and pass it on at once (most messages go through without a second poll).
 * 0: read or would block; -1: the sending end closed or failed; 1: the byte limit. */
static int pump(direction *d, uint64_t max_bytes, uint64_t *carried) {
    ssize_t n;
    do {
        n = recv(d->from, d->buf, PHASE_SPLICE_CHUNK, 0);
    } while (n < 0 && errno == EINTR);
    if (n == 0) return -1;
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    *carried += (uint64_t)n;
    if (max_bytes && *carried > max_bytes) return 1;
    d->len = (size_t)n;
    d->off = 0;
    return flush(d);
}

phase_splice_end phase_splice(int a, int b, uint64_t max_bytes, int64_t timeout_ms, uint64_t *carried) {
    *carried = 0;
    if (set_nonblocking(a) < 0 || set_nonblocking(b) < 0) return PHASE_SPLICE_ERROR;
    char *mem = malloc(2 * PHASE_SPLICE_CHUNK);
    if (!mem) return PHASE_SPLICE_ERROR;
    direction dirs[2] = {{a, b, mem, 0, 0}, {b, a, mem + PHASE_SPLICE_CHUNK, 0, 0}};
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    phase_splice_end end = PHASE_SPLICE_CLOSED;
    for (;;) {
        /* pfd[i] is dirs[i].from, which is also dirs[1 - i].to */
        struct pollfd pfd[2];
        for (int i = 0; i < 2; i++) {
            pfd[i].fd = dirs[i].from;
            pfd[i].events = (short)((dirs[i].len == 0 ? POLLIN : 0) | (dirs[1 - i].len ? POLLOUT : 0));
            pfd[i].revents = 0;
        }
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0) {
                end = PHASE_SPLICE_TIME;
                break;
            }
            wait = left > 60000 ? 60000 : (int)left;
        }
        int ready = poll(pfd, 2, wait);
        if (ready < 0) {
            if (errno == EINTR) continue;
            end = PHASE_SPLICE_ERROR;
            break;
        }
        if (ready == 0) continue; /* the deadline is checked at the top */
        int stop = 0;
        for (int i = 0; i < 2 && !stop; i++) {
            short ev = pfd[i].revents;
            /* writable (or failed) towards dirs[i].from: what the other direction holds */
            if ((ev & (POLLOUT | POLLERR | POLLHUP)) && dirs[1 - i].len && flush(&dirs[1 - i]) < 0) stop = -1;
            if (!stop && (ev & (POLLIN | POLLERR | POLLHUP)) && dirs[i].len == 0)
                stop = pump(&dirs[i], max_bytes, carried);
            /* an end that failed while its data still waits for the other end: nothing more will come */
            if (!stop && (ev & (POLLNVAL | POLLERR | POLLHUP)) && dirs[i].len) stop = -1;
            if (!stop && (ev & POLLNVAL)) stop = -1;
        }
        if (stop) {
            end = stop > 0 ? PHASE_SPLICE_BYTES : PHASE_SPLICE_CLOSED;
            break;
        }
    }
    free(mem);
    return end;
}
