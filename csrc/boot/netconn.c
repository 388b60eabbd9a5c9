/* Reaching a source: TCP connect with a deadline, DNS names through c-ares (a static binary
 * cannot use glibc's NSS), and SOCKS5 (RFC 1928, no authentication, CONNECT only) with the
 * name passed to the proxy, which is what Tor's SOCKS port expects for .onion and for
 * resolving without leaking queries. */
#define _GNU_SOURCE
#include "netconn.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "tools.h"

#define MAX_ADDRS 4

/* An IPv4 or IPv6 literal and a port into a socket address; 0 or -1 if host is not a literal. */
static int ip_sockaddr(const char *host, long port, struct sockaddr_storage *addr, socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
    memset(addr, 0, sizeof *addr);
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
    } else {
        return -1;
    }
    return 0;
}

int phase_parse_ip_port(const char *text, struct sockaddr_storage *addr, socklen_t *len)
{
    char host[64];
    const char *colon;
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (!end || end[1] != ':' || (size_t)(end - text - 1) >= sizeof host) return -1;
        memcpy(host, text + 1, (size_t)(end - text - 1));
        host[end - text - 1] = 0;
        colon = end + 1;
    } else {
        colon = strrchr(text, ':');
        if (!colon || (size_t)(colon - text) >= sizeof host) return -1;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || port < 1 || port > 65535) return -1;
    return ip_sockaddr(host, port, addr, len);
}

int phase_host_kind(const char *host)
{
    unsigned char buf[16];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) return 1;
    size_t n = strlen(host), label = 0;
    if (n == 0 || n > 253) return -1;
    for (size_t i = 0; i < n; i++) {
        char c = host[i];
        if (c == '.') {
            if (label == 0) return -1;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                   c == '_') {
            if (++label > 63) return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

static void describe(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
        port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
        snprintf(out, outlen, "%s:%d", ip, port);
    } else {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        snprintf(out, outlen, "[%s]:%d", ip, port);
    }
}

static int connect_timeout(const struct sockaddr *sa, socklen_t salen, int timeout_s, char *why, size_t whylen)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return -1;
    }
    int err = 0;
    if (connect(fd, sa, salen) != 0) {
        if (errno != EINPROGRESS) {
            err = errno;
        } else {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int r = poll(&pfd, 1, timeout_s * 1000);
            socklen_t el = sizeof err;
            if (r == 0) err = ETIMEDOUT;
            else if (r < 0) err = errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el)) err = errno;
        }
    }
    if (err) {
        char where[80];
        describe(sa, where, sizeof where);
        if (err == ETIMEDOUT)
            snprintf(why, whylen, "connect %s: timed out after %d s", where, timeout_s);
        else
            snprintf(why, whylen, "connect %s: %s", where, strerror(err));
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = timeout_s};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* --- DNS through c-ares -------------------------------------------------------------------- */

struct lookup {
    int done, status, n;
    struct sockaddr_storage addr[MAX_ADDRS];
    socklen_t len[MAX_ADDRS];
};

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    struct lookup *l = arg;
    l->done = 1;
    l->status = status;
    for (struct ares_addrinfo_node *n = ai ? ai->nodes : NULL; n && l->n < MAX_ADDRS; n = n->ai_next) {
        if ((n->ai_family != AF_INET && n->ai_family != AF_INET6) || n->ai_addrlen > sizeof l->addr[0]) continue;
        memcpy(&l->addr[l->n], n->ai_addr, n->ai_addrlen);
        l->len[l->n++] = n->ai_addrlen;
    }
    if (ai) ares_freeaddrinfo(ai);
}

static int resolve(const char *dns, const char *host, int port, int timeout_s, struct lookup *l, char *why,
                   size_t whylen, int *retryable)
{
    static int ares_ready;
    if (!ares_ready) {
        int rc = ares_library_init(ARES_LIB_INIT_ALL);
        if (rc != ARES_SUCCESS) {
            snprintf(why, whylen, "DNS: %s", ares_strerror(rc));
            return -1;
        }
        ares_ready = 1;
    }
    ares_channel ch;
    struct ares_options opts = {.timeout = 1500, .tries = 2};
    int rc = ares_init_options(&ch, &opts, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        snprintf(why, whylen, "DNS: %s", ares_strerror(rc));
        *retryable = 1;
        return -1;
    }
    if (dns && (rc = ares_set_servers_ports_csv(ch, dns)) != ARES_SUCCESS) {
        snprintf(why, whylen, "DNS server '%s': %s", dns, ares_strerror(rc));
        ares_destroy(ch);
        return -1;
    }
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                        .ai_flags = ARES_AI_NUMERICSERV};
    memset(l, 0, sizeof *l);
    ares_getaddrinfo(ch, host, service, &hints, on_addrinfo, l);
    long long deadline = phase_now_ms() + timeout_s * 1000LL;
    while (!l->done) {
        long long left = deadline - phase_now_ms();
        if (left <= 0) break;
        fd_set rd, wr;
        FD_ZERO(&rd);
        FD_ZERO(&wr);
        int nfds = ares_fds(ch, &rd, &wr);
        if (nfds == 0) break;
        struct timeval maxtv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000}, tv;
        struct timeval *tvp = ares_timeout(ch, &maxtv, &tv);
        if (select(nfds, &rd, &wr, NULL, tvp) < 0 && errno != EINTR) break;
        ares_process(ch, &rd, &wr);
    }
    if (!l->done) {
        ares_cancel(ch);
        l->status = ARES_ETIMEOUT;
    }
    ares_destroy(ch);
    if (l->status == ARES_SUCCESS && l->n > 0) return 0;
    if (l->status == ARES_ENOTFOUND || l->status == ARES_ENODATA || l->status == ARES_ENONAME ||
        (l->status == ARES_SUCCESS && l->n == 0)) {
        snprintf(why, whylen, "DNS: name '%s' not found", host);
        *retryable = 0;
    } else {
        snprintf(why, whylen, "DNS: cannot resolve '%s': %s", host, ares_strerror(l->status));
        *retryable = 1;
    }
    return -1;
}

int phase_resolve(const char *dns, const char *host, int port, int timeout_s, struct sockaddr_storage *out,
                  socklen_t *lens, int max, char *why, size_t whylen)
{
    struct lookup l;
    int retryable = 0;
    if (max < 1) return -1;
    if (ip_sockaddr(host, port, &out[0], &lens[0]) == 0) return 1;
    if (resolve(dns, host, port, timeout_s, &l, why, whylen, &retryable)) return -1;
    int n = l.n < max ? l.n : max;
    for (int i = 0; i < n; i++) {
        out[i] = l.addr[i];
        lens[i] = l.len[i];
    }
    return n;
}

/* --- SOCKS5 ---------------------------------------------------------------------------------- */

static int recv_exact(int fd, unsigned char *buf, size_t n)
{
    while (n) {
        ssize_t r = recv(fd, buf, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

static const char *socks_reply_text(int rep)
{
    static const char *text[] = {"succeeded", "general failure", "connection not allowed by ruleset",
                                 "network unreachable", "host unreachable", "connection refused",
                                 "TTL expired", "command not supported", "address type not supported"};
    return rep >= 0 && rep < 9 ? text[rep] : "unknown reply";
}

static int socks5_connect(int fd, const struct phase_route *route, const struct phase_endpoint *ep, char *why,
                          size_t whylen, int *retryable)
{
    unsigned char b[4 + 1 + 255 + 2];
    size_t n = 0;
    if (send(fd, "\x05\x01\x00", 3, MSG_NOSIGNAL) != 3 || recv_exact(fd, b, 2)) {
        snprintf(why, whylen, "proxy %s: no SOCKS5 greeting (%s)", route->proxy_text,
                 errno ? strerror(errno) : "connection closed");
        return -1;
    }
    if (b[0] != 5) {
        snprintf(why, whylen, "proxy %s is not a SOCKS5 proxy", route->proxy_text);
        *retryable = 0;
        return -1;
    }
    if (b[1] != 0) {
        snprintf(why, whylen, "proxy %s wants authentication, which stage 1 does not do", route->proxy_text);
        *retryable = 0;
        return -1;
    }
    b[n++] = 5, b[n++] = 1, b[n++] = 0; /* version, CONNECT, reserved */
    if (inet_pton(AF_INET, ep->host, b + n + 1) == 1) {
        b[n] = 1;
        n += 1 + 4;
    } else if (inet_pton(AF_INET6, ep->host, b + n + 1) == 1) {
        b[n] = 4;
        n += 1 + 16;
    } else { /* a name: the proxy resolves it, no DNS query of ours leaves the machine */
        size_t hl = strlen(ep->host);
        b[n++] = 3;
        b[n++] = (unsigned char)hl;
        memcpy(b + n, ep->host, hl);
        n += hl;
    }
    b[n++] = (unsigned char)(ep->port >> 8);
    b[n++] = (unsigned char)ep->port;
    if (send(fd, b, n, MSG_NOSIGNAL) != (ssize_t)n || recv_exact(fd, b, 4)) {
        snprintf(why, whylen, "proxy %s: no reply to CONNECT %s:%d (%s)", route->proxy_text, ep->host, ep->port,
                 errno ? strerror(errno) : "connection closed");
        return -1;
    }
    if (b[0] != 5 || b[1] != 0) {
        snprintf(why, whylen, "proxy %s: CONNECT %s:%d: %s", route->proxy_text, ep->host, ep->port,
                 b[0] != 5 ? "malformed reply" : socks_reply_text(b[1]));
        *retryable = b[0] == 5 && b[1] != 2 && b[1] != 7 && b[1] != 8;
        return -1;
    }
    size_t rest = b[3] == 1 ? 4 + 2 : b[3] == 4 ? 16 + 2 : 0;
    if (b[3] == 3) {
        if (recv_exact(fd, b, 1)) goto short_reply;
        rest = (size_t)b[0] + 2;
    }
    if (rest == 0) {
        snprintf(why, whylen, "proxy %s: malformed reply", route->proxy_text);
        *retryable = 0;
        return -1;
    }
    if (recv_exact(fd, b, rest)) goto short_reply;
    return 0;
short_reply:
    snprintf(why, whylen, "proxy %s: reply cut short", route->proxy_text);
    return -1;
}

int phase_open_stream(const struct phase_route *route, const struct phase_endpoint *ep, int timeout_s,
                      char *why, size_t whylen, int *retryable)
{
    *retryable = 1;
    errno = 0;
    if (route->socks) {
        int fd = connect_timeout((const struct sockaddr *)&route->proxy, route->proxylen, timeout_s, why, whylen);
        if (fd < 0) {
            char inner[300];
            snprintf(inner, sizeof inner, "%s", why);
            snprintf(why, whylen, "proxy unreachable: %s", inner);
            return -1;
        }
        if (socks5_connect(fd, route, ep, why, whylen, retryable)) {
            close(fd);
            return -1;
        }
        return fd;
    }
    struct lookup l;
    if (ip_sockaddr(ep->host, ep->port, &l.addr[0], &l.len[0]) == 0)
        l.n = 1;
    else if (resolve(route->dns, ep->host, ep->port, timeout_s, &l, why, whylen, retryable))
        return -1;
    for (int i = 0; i < l.n; i++) {
        int fd = connect_timeout((const struct sockaddr *)&l.addr[i], l.len[i], timeout_s, why, whylen);
        if (fd >= 0) return fd;
    }
    return -1;
}
