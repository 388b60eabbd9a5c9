/* phase-discover: find boot artifact sources on the LAN with a one-shot mDNS query.
 *
 *   phase-discover [--service _phase-boot._tcp.local] [--timeout S] [--server IP[:PORT]] [--interface IP]
 *
 * Sends a PTR query for the service (QU bit set: responders answer by unicast to our port,
 * RFC 6762 section 5.1, so we need not bind 5353 or join the group), gathers the PTR, SRV and
 * A records of every answer until the timeout -- or until SETTLE_MS after the first complete
 * answer (PTR + SRV), since responders answer such a query at once and stage 1 should not sit
 * out the whole timeout on every boot -- and prints one source per line as
 * http://IP:PORT. --server sends the query to another address (tests use 127.0.0.1:PORT);
 * --interface picks the interface multicast leaves by (its IPv4 address; tests use 127.0.0.1).
 * Without --interface a multicast query goes out of every interface that is up, has an IPv4
 * address and does multicast (loopback excluded), each chosen explicitly with IP_MULTICAST_IF:
 * a LAN whose DHCP server names no router leaves stage 1 without a default route, and a
 * multicast send with no interface and no route fails with "Network is unreachable".
 * Exit 0 if at least one source was found, 1 if none, 2 on usage errors. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tools.h"

#define MAX_RECORDS 64
#define MAX_IFACES 16
#define SETTLE_MS 1000
#define NAME_MAX_LEN 256

struct rec {
    char owner[NAME_MAX_LEN];
    int type;
    char target[NAME_MAX_LEN]; /* PTR, SRV */
    int port;                  /* SRV */
    struct in_addr a;          /* A */
    struct in_addr from;       /* who sent it */
};

static struct rec recs[MAX_RECORDS];
static int nrecs;

/* Read a possibly compressed name at *off; returns 0 and advances *off, or -1 if malformed. */
static int read_name(const uint8_t *pkt, size_t len, size_t *off, char *out)
{
    size_t o = *off, olen = 0;
    int jumped = 0, hops = 0;
    out[0] = 0;
    for (;;) {
        if (o >= len) return -1;
        uint8_t l = pkt[o];
        if ((l & 0xC0) == 0xC0) {
            if (o + 1 >= len || ++hops > 16) return -1;
            if (!jumped) *off = o + 2;
            o = ((size_t)(l & 0x3F) << 8) | pkt[o + 1];
            jumped = 1;
            continue;
        }
        if (l & 0xC0) return -1;
        if (l == 0) {
            if (!jumped) *off = o + 1;
            out[olen] = 0;
            return 0;
        }
        if (o + 1 + l > len || olen + l + 2 >= NAME_MAX_LEN) return -1;
        if (olen) out[olen++] = '.';
        for (size_t i = 0; i < l; i++) {
            char c = (char)pkt[o + 1 + i];
            out[olen++] = (c > ' ' && c < 127) ? c : '?';
        }
        o += 1 + (size_t)l;
    }
}

static void parse_packet(const uint8_t *pkt, size_t len, struct in_addr from)
{
    if (len < 12) return;
    unsigned qd = (unsigned)(pkt[4] << 8 | pkt[5]);
    unsigned rr = (unsigned)(pkt[6] << 8 | pkt[7]) + (unsigned)(pkt[8] << 8 | pkt[9]) + (unsigned)(pkt[10] << 8 | pkt[11]);
    if (!(pkt[2] & 0x80)) return; /* a query, not a response */
    size_t off = 12;
    char name[NAME_MAX_LEN];
    for (unsigned i = 0; i < qd; i++) {
        if (read_name(pkt, len, &off, name) || off + 4 > len) return;
        off += 4;
    }
    for (unsigned i = 0; i < rr && nrecs < MAX_RECORDS; i++) {
        struct rec r;
        memset(&r, 0, sizeof r);
        if (read_name(pkt, len, &off, r.owner) || off + 10 > len) return;
        r.type = pkt[off] << 8 | pkt[off + 1];
        size_t rdlen = (size_t)(pkt[off + 8] << 8 | pkt[off + 9]);
        off += 10;
        if (off + rdlen > len) return;
        size_t rd = off;
        r.from = from;
        int keep = 0;
        if (r.type == 12) { /* PTR */
            keep = read_name(pkt, len, &rd, r.target) == 0;
        } else if (r.type == 33 && rdlen >= 7) { /* SRV: priority, weight, port, target */
            r.port = pkt[rd + 4] << 8 | pkt[rd + 5];
            rd += 6;
            keep = read_name(pkt, len, &rd, r.target) == 0 && r.port > 0;
        } else if (r.type == 1 && rdlen == 4) { /* A */
            memcpy(&r.a, pkt + rd, 4);
            keep = 1;
        }
        if (keep) recs[nrecs++] = r;
        off += rdlen;
    }
}

/* Indexes of the interfaces a multicast query should leave by (see the top of this file). */
static int multicast_interfaces(int *idx, int cap)
{
    struct ifaddrs *list, *ifa;
    int n = 0;
    if (getifaddrs(&list) != 0) return 0;
    for (ifa = list; ifa && n < cap; ifa = ifa->ifa_next) {
        if (!ifa->ifa_addr || ifa->ifa_addr->sa_family != AF_INET) continue;
        if (!(ifa->ifa_flags & IFF_UP) || !(ifa->ifa_flags & IFF_MULTICAST) || (ifa->ifa_flags & IFF_LOOPBACK)) continue;
        int i = (int)if_nametoindex(ifa->ifa_name), dup = 0;
        for (int k = 0; k < n; k++) dup |= idx[k] == i;
        if (i > 0 && !dup) idx[n++] = i;
    }
    freeifaddrs(list);
    return n;
}

/* One copy of the query to dst; by interface ifindex when > 0. Returns 0 or an errno. */
static int send_query(int fd, const uint8_t *q, size_t qlen, const struct sockaddr_in *dst, int ifindex)
{
    if (ifindex > 0) {
        struct ip_mreqn mr = {.imr_ifindex = ifindex};
        if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &mr, sizeof mr) != 0) return errno;
    }
    return sendto(fd, q, qlen, 0, (const struct sockaddr *)dst, sizeof *dst) < 0 ? errno : 0;
}

/* Whether some PTR for service has its SRV record yet: a source that can be printed. */
static int have_source(const char *service)
{
    for (int i = 0; i < nrecs; i++) {
        if (recs[i].type != 12 || strcasecmp(recs[i].owner, service) != 0) continue;
        for (int k = 0; k < nrecs; k++)
            if (recs[k].type == 33 && strcasecmp(recs[k].owner, recs[i].target) == 0) return 1;
    }
    return 0;
}

static size_t build_query(uint8_t *q, size_t cap, const char *service)
{
    size_t o = 12;
    memset(q, 0, 12);
    q[5] = 1; /* one question */
    const char *p = service;
    while (*p) {
        size_t l = strcspn(p, ".");
        if (l == 0 || l > 63 || o + l + 6 > cap) return 0;
        q[o++] = (uint8_t)l;
        memcpy(q + o, p, l);
        o += l;
        p += l;
        if (*p == '.') p++;
    }
    q[o++] = 0;
    q[o++] = 0; q[o++] = 12;      /* PTR */
    q[o++] = 0x80; q[o++] = 1;    /* QU + IN */
    return o;
}

int phase_discover_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"service", required_argument, 0, 's'}, {"timeout", required_argument, 0, 't'},
        {"server", required_argument, 0, 'S'}, {"interface", required_argument, 0, 'i'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *service = "_phase-boot._tcp.local", *server = "224.0.0.251:5353", *iface = NULL;
    int c, timeout_s = 3;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's': service = optarg; break;
        case 't': timeout_s = atoi(optarg); break;
        case 'S': server = optarg; break;
        case 'i': iface = optarg; break;
        default: goto usage;
        }
    }
    if (optind != argc || timeout_s < 1) goto usage;
    char host[64];
    int port = 5353;
    snprintf(host, sizeof host, "%s", server);
    char *colon = strchr(host, ':');
    if (colon) { *colon = 0; port = atoi(colon + 1); }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &dst.sin_addr) != 1 || port < 1 || port > 65535) goto usage;

    uint8_t q[512], pkt[9000];
    size_t qlen = build_query(q, sizeof q, service);
    if (!qlen) goto usage;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "phase-discover: socket: %s\n", strerror(errno));
        return 1;
    }
    unsigned char ttl = 255;
    setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl);
    if (iface) {
        struct in_addr ifaddr;
        if (inet_pton(AF_INET, iface, &ifaddr) != 1 ||
            setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &ifaddr, sizeof ifaddr) != 0) {
            fprintf(stderr, "phase-discover: --interface %s: %s\n", iface, errno ? strerror(errno) : "not an IPv4 address");
            close(fd);
            return 2;
        }
    }
    int ifidx[MAX_IFACES], nif = 0;
    if (!iface && IN_MULTICAST(ntohl(dst.sin_addr.s_addr))) nif = multicast_interfaces(ifidx, MAX_IFACES);
    if (nif == 0) ifidx[nif++] = 0; /* --interface, a unicast --server, or no interface found: as routed */
    long long deadline = phase_now_ms() + timeout_s * 1000LL, next_send = 0;
    int sends = 0, settled = 0;
    for (;;) {
        long long now = phase_now_ms();
        if (now >= deadline) break;
        if (now >= next_send && sends < 3 && !settled) { /* a few repeats: UDP on a fresh link loses packets */
            for (int k = 0; k < nif; k++) {
                int err = send_query(fd, q, qlen, &dst, ifidx[k]);
                if (err && sends == 0) {
                    char name[IF_NAMESIZE] = "";
                    if (ifidx[k] > 0) if_indextoname((unsigned)ifidx[k], name);
                    fprintf(stderr, "phase-discover: send to %s%s%s: %s\n", server, name[0] ? " on " : "", name,
                            strerror(err));
                }
            }
            sends++;
            next_send = now + 700;
        }
        long long wait = (sends < 3 && !settled ? next_send : deadline) - now;
        if (wait > deadline - now) wait = deadline - now;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(wait > 0 ? wait : 1)) <= 0) continue;
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&from, &fl);
        if (n > 0) parse_packet(pkt, (size_t)n, from.sin_addr);
        if (!settled && have_source(service)) {
            settled = 1;
            if (phase_now_ms() + SETTLE_MS < deadline) deadline = phase_now_ms() + SETTLE_MS;
        }
    }
    close(fd);

    int found = 0;
    char seen[MAX_RECORDS][80];
    for (int i = 0; i < nrecs; i++) {
        if (recs[i].type != 12 || strcasecmp(recs[i].owner, service) != 0) continue;
        for (int k = 0; k < nrecs; k++) {
            if (recs[k].type != 33 || strcasecmp(recs[k].owner, recs[i].target) != 0) continue;
            struct in_addr addr = recs[k].from;
            for (int a = 0; a < nrecs; a++)
                if (recs[a].type == 1 && strcasecmp(recs[a].owner, recs[k].target) == 0) { addr = recs[a].a; break; }
            char line[80], ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &addr, ip, sizeof ip);
            snprintf(line, sizeof line, "http://%s:%d", ip, recs[k].port);
            int dup = 0;
            for (int s = 0; s < found; s++) dup |= strcmp(seen[s], line) == 0;
            if (!dup && found < MAX_RECORDS) {
                snprintf(seen[found++], sizeof seen[0], "%s", line);
                printf("%s\n", line);
            }
        }
    }
    if (!found) fprintf(stderr, "phase-discover: no %s answered within %d s\n", service, timeout_s);
    return found ? 0 : 1;
usage:
    fprintf(stderr, "usage: phase-discover [--service NAME] [--timeout S] [--server IP[:PORT]] [--interface IP]\n");
    return 2;
}
