#ifndef PHASE_BOOT_NETCONN_H
#define PHASE_BOOT_NETCONN_H

/* How stage 1 reaches a source: directly (an IP, or a name resolved with c-ares against
 * /etc/resolv.conf or --dns), or through a SOCKS5 proxy that resolves names itself, so that
 * in Private mode no DNS query and no connection leaves except to the proxy. */

#include <sys/socket.h>

#define PHASE_HOST_MAX 256

struct phase_endpoint {
    char host[PHASE_HOST_MAX]; /* IP literal or DNS name, as written in the URL */
    int port;
};

struct phase_route {
    const char *dns;                 /* "IP[:PORT]" nameserver override, or NULL for /etc/resolv.conf */
    int socks;                       /* 1: every connection goes through the proxy below */
    struct sockaddr_storage proxy;
    socklen_t proxylen;
    char proxy_text[96];
};

/* "IP:PORT" or "[IPv6]:PORT" into a socket address; 0 or -1. */
int phase_parse_ip_port(const char *text, struct sockaddr_storage *addr, socklen_t *len);

/* 1 if host is an IPv4/IPv6 literal, 0 if it is a well-formed DNS name, -1 otherwise. */
int phase_host_kind(const char *host);

#define PHASE_RESOLVE_MAX 4

/* host (a literal, or a DNS name resolved with c-ares, through dns if given) and port into up to max
 * socket addresses, IPv4 and IPv6; the number, or -1 with a one-line reason in why. */
int phase_resolve(const char *dns, const char *host, int port, int timeout_s, struct sockaddr_storage *out,
                  socklen_t *lens, int max, char *why, size_t whylen);

/* A connected TCP stream to ep (via the proxy if route->socks), with send/receive timeouts of
 * timeout_s set; -1 with a one-line reason in why. *retryable says whether trying again later
 * may help (refused, unreachable, DNS timeout) or not (name does not exist, proxy protocol). */
int phase_open_stream(const struct phase_route *route, const struct phase_endpoint *ep, int timeout_s,
                      char *why, size_t whylen, int *retryable);

#endif
