/* phase-dht: find boot artifact sources on the BitTorrent Mainline DHT (BEP 5).
 *
 *   phase-dht --key PUB --bootstrap HOST:PORT[,HOST:PORT...] [--timeout S] [--max-queries N] [--dns IP[:PORT]]
 *   phase-dht --key PUB --info-hash          (print the info-hash)
 *   phase-dht --target HEX --bootstrap ...   (look up another info-hash: simulations, diagnostics)
 *   [--source IP]                            (send from this local address)
 *
 * HOST is an IPv4 address, an IPv6 address in brackets ([::1]:6881), or a DNS name (resolved with c-ares
 * against /etc/resolv.conf or --dns, every address it has; a name that does not resolve is skipped with
 * a line saying why). IPv6 is BEP 32: nodes6 in answers, 18-byte peers in values, and the queries ask
 * (want) for the families of the bootstrap nodes, so an IPv4-only machine never spends queries on IPv6.
 *
 * Sources announce their HTTP port under the info-hash of the release key (the first 20 bytes of
 * SHA-256("phase-boot/1" || public key); pyphase.boot.dht computes the same). This runs the KRPC
 * get_peers iterative lookup over UDP: ask the nodes closest to the info-hash (XOR metric) for
 * peers, learn closer nodes from their answers, until the closest ones have all been asked. Each
 * peer found is printed as http://IP:PORT. The queries say "ro" (BEP 43): stage 1 stores nothing.
 *
 * Everything about it is bounded, since any node on the Internet may answer: at most MAX_CANDIDATES
 * nodes kept (the closest), --max-queries queries, --timeout seconds, MAX_PEERS peers, datagrams of
 * at most MAX_DATAGRAM bytes, bencode nested at most MAX_DEPTH deep; an answer is taken only from
 * the address it was asked of, with the transaction id it was asked with, once. Malformed answers
 * are dropped. A loopback address in an answer from a node that is not itself on loopback stands
 * for that node's own host (QEMU's user network shows the host's loopback as 10.0.2.2); other
 * unusable addresses (0/8, 127/8 otherwise, multicast, broadcast, port 0) are dropped.
 *
 * BEP 42: a node's id must start with 21 bits derived from its IP (CRC32-C of the masked address), so a liar
 * cannot pick ids next to the info-hash without as many addresses. Nodes whose ids do not match their
 * addresses (old clients, or liars) are kept but asked only after every node whose id does; local addresses
 * (10/8, 172.16/12, 192.168/16, 169.254/16, 127/8, fc00::/7, fe80::/10, ::1) are exempt, as BEP 42 says.
 * Exit 0 if at least one source was found, 1 if none, 2 on usage errors. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../phase_crypto.h"
#include "bootmanifest.h"
#include "netconn.h"
#include "tools.h"

#define ID_LEN 20
#define MAX_CANDIDATES 128
#define MAX_PEERS 32
#define MAX_BOOTSTRAP 16
#define MAX_DATAGRAM 1500
#define MAX_DEPTH 16
#define CLOSEST 8          /* the lookup ends when the CLOSEST nearest answering nodes were all asked */
#define PARALLEL 4         /* queries in flight */
#define QUERY_TIMEOUT_MS 1000
#define SETTLE_MS 1000     /* after the first peer, wait at most this long for more */
#define DNS_TIMEOUT_S 5    /* per bootstrap name */

static const char INFOHASH_PREFIX[] = "phase-boot/1";

enum { C_NEW, C_ASKED, C_ANSWERED, C_FAILED };

/* A node or peer address, IPv4 or IPv6 (the family says which part of the union). */
typedef union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
} addr_t;

struct candidate {
    addr_t addr;
    uint8_t id[ID_LEN];
    int has_id;    /* bootstrap nodes have no known id: asked first */
    int verified;  /* its id matches its address (BEP 42), or the address is local: asked before those that do not */
    int state;
    int hops;      /* answers it took to learn of this node: 1 for a bootstrap node */
    uint16_t tid;  /* transaction id of the query in flight */
    long long sent_ms;
};

struct lookup {
    uint8_t target[ID_LEN], self[ID_LEN];
    struct candidate c[MAX_CANDIDATES];
    int n;
    addr_t peers[MAX_PEERS];
    int npeers;
    int want4, want6;  /* address families to ask nodes for (BEP 32 "want"), from the bootstrap nodes' */
    int queries, answers, malformed, unverified;
    long long first_peer_ms;
    int peer_hops;  /* hops of the node that named the first peer */
    uint16_t next_tid;
};

/* ---- bencode: a bounded reader ---------------------------------------------------------------- */

/* Length of the string at *off ("<len>:<bytes>"); sets *data and advances. -1 if malformed. */
static int b_string(const uint8_t *p, size_t n, size_t *off, const uint8_t **data, size_t *len)
{
    size_t o = *off, v = 0;
    if (o >= n || p[o] < '0' || p[o] > '9') return -1;
    if (p[o] == '0' && o + 1 < n && p[o + 1] != ':') return -1;
    while (o < n && p[o] >= '0' && p[o] <= '9') {
        v = v * 10 + (size_t)(p[o++] - '0');
        if (v > n) return -1;
    }
    if (o >= n || p[o] != ':' || v > n - o - 1) return -1;
    *data = p + o + 1;
    *len = v;
    *off = o + 1 + v;
    return 0;
}

/* Skip one value of any type at *off, nested at most depth deep. 0 or -1. */
static int b_skip(const uint8_t *p, size_t n, size_t *off, int depth)
{
    const uint8_t *d;
    size_t l, o = *off;
    if (o >= n || depth <= 0) return -1;
    if (p[o] == 'i') {
        o++;
        if (o < n && p[o] == '-') o++;
        size_t digits = 0;
        while (o < n && p[o] >= '0' && p[o] <= '9') o++, digits++;
        if (digits == 0 || digits > 20 || o >= n || p[o] != 'e') return -1;
        *off = o + 1;
        return 0;
    }
    if (p[o] == 'l' || p[o] == 'd') {
        int dict = p[o] == 'd';
        o++;
        while (o < n && p[o] != 'e') {
            if (dict && b_string(p, n, &o, &d, &l)) return -1;
            if (b_skip(p, n, &o, depth - 1)) return -1;
        }
        if (o >= n) return -1;
        *off = o + 1;
        return 0;
    }
    return b_string(p, n, off, &d, &l);
}

/* In the dict at p[off] (which must start with 'd'), the offset of the value of key, or -1. The whole
 * dict is walked, so a malformed dict is never half-trusted. */
static long b_dict_get(const uint8_t *p, size_t n, size_t off, const char *key)
{
    const uint8_t *k;
    size_t kl, klen = strlen(key);
    long found = -1;
    if (off >= n || p[off] != 'd') return -1;
    off++;
    while (off < n && p[off] != 'e') {
        if (b_string(p, n, &off, &k, &kl)) return -1;
        size_t at = off;
        if (b_skip(p, n, &off, MAX_DEPTH)) return -1;
        if (kl == klen && memcmp(k, key, kl) == 0 && found < 0) found = (long)at;
    }
    return off < n ? found : -1;
}

/* The string value of key in the dict at off; 0 with data/len, or -1. */
static int b_dict_str(const uint8_t *p, size_t n, size_t off, const char *key, const uint8_t **data, size_t *len)
{
    long at = b_dict_get(p, n, off, key);
    size_t o = (size_t)at;
    return at < 0 ? -1 : b_string(p, n, &o, data, len);
}

/* ---- the lookup ------------------------------------------------------------------------------- */

static int closer(const uint8_t *target, const struct candidate *a, const struct candidate *b)
{
    if (a->has_id != b->has_id) return a->has_id < b->has_id; /* bootstrap nodes first */
    if (a->verified != b->verified) return a->verified > b->verified; /* then ids that BEP 42 vouches for */
    for (int i = 0; i < ID_LEN; i++) {
        uint8_t x = a->id[i] ^ target[i], y = b->id[i] ^ target[i];
        if (x != y) return x < y;
    }
    return 0;
}

static socklen_t addr_len(const addr_t *a)
{
    return a->sa.sa_family == AF_INET6 ? sizeof a->in6 : sizeof a->in4;
}

static int same_addr(const addr_t *a, const addr_t *b)
{
    if (a->sa.sa_family != b->sa.sa_family) return 0;
    if (a->sa.sa_family == AF_INET6)
        return memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, 16) == 0 && a->in6.sin6_port == b->in6.sin6_port;
    return a->in4.sin_addr.s_addr == b->in4.sin_addr.s_addr && a->in4.sin_port == b->in4.sin_port;
}

static int is_loopback(const addr_t *a)
{
    if (a->sa.sa_family == AF_INET6) return IN6_IS_ADDR_LOOPBACK(&a->in6.sin6_addr);
    return (ntohl(a->in4.sin_addr.s_addr) >> 24) == 127;
}

/* Local addresses, which BEP 42 exempts from its node id rule. */
static int is_local(const addr_t *a)
{
    if (a->sa.sa_family == AF_INET6) {
        const uint8_t *b = a->in6.sin6_addr.s6_addr;
        return IN6_IS_ADDR_LOOPBACK(&a->in6.sin6_addr) || (b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
    }
    uint32_t ip = ntohl(a->in4.sin_addr.s_addr);
    return (ip >> 24) == 10 || (ip >> 24) == 127 || (ip >> 20) == 0xAC1 || (ip >> 16) == 0xC0A8 || (ip >> 16) == 0xA9FE;
}

static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* BEP 42: id[0..2] (21 bits) = CRC32-C of the IP masked (IPv4: 0x030f3fff; IPv6: the first 8 bytes masked by
 * 0x0103070f1f3f7fff) with r = id[19] & 7 in its top 3 bits. Local addresses pass. */
static int bep42_ok(const addr_t *a, const uint8_t *id)
{
    static const uint8_t mask4[4] = {0x03, 0x0f, 0x3f, 0xff};
    static const uint8_t mask6[8] = {0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff};
    uint8_t ip[8];
    size_t n = a->sa.sa_family == AF_INET6 ? 8 : 4;
    if (is_local(a)) return 1;
    memcpy(ip, n == 8 ? (const void *)&a->in6.sin6_addr : (const void *)&a->in4.sin_addr, n);
    for (size_t i = 0; i < n; i++) ip[i] &= n == 8 ? mask6[i] : mask4[i];
    ip[0] |= (uint8_t)((id[19] & 7) << 5);
    uint32_t crc = crc32c(ip, n);
    return id[0] == (uint8_t)(crc >> 24) && id[1] == (uint8_t)(crc >> 16) && (id[2] & 0xf8) == ((crc >> 8) & 0xf8);
}

/* Compact form (BEP 5: 4-byte IPv4 or, BEP 32, 16-byte IPv6, then the port) into an address. */
static void from_compact(addr_t *a, const uint8_t *p, size_t iplen)
{
    memset(a, 0, sizeof *a);
    if (iplen == 16) {
        a->in6.sin6_family = AF_INET6;
        memcpy(&a->in6.sin6_addr, p, 16);
        memcpy(&a->in6.sin6_port, p + 16, 2);
    } else {
        a->in4.sin_family = AF_INET;
        memcpy(&a->in4.sin_addr, p, 4);
        memcpy(&a->in4.sin_port, p + 4, 2);
    }
}

/* An address from an answer, made usable or refused (see the top of this file). */
static int usable(addr_t *a, const addr_t *from)
{
    if (a->sa.sa_family == AF_INET6) {
        const struct in6_addr *ip = &a->in6.sin6_addr;
        if (a->in6.sin6_port == 0 || IN6_IS_ADDR_UNSPECIFIED(ip) || IN6_IS_ADDR_MULTICAST(ip) ||
            IN6_IS_ADDR_V4MAPPED(ip) || IN6_IS_ADDR_V4COMPAT(ip))
            return 0;
        if (IN6_IS_ADDR_LOOPBACK(ip) && !is_loopback(from)) {
            if (from->sa.sa_family != AF_INET6) return 0;
            a->in6.sin6_addr = from->in6.sin6_addr;
        }
        return 1;
    }
    uint32_t ip = ntohl(a->in4.sin_addr.s_addr);
    if (a->in4.sin_port == 0) return 0;
    if ((ip >> 24) == 127) {
        if (is_loopback(from)) return 1;
        if (from->sa.sa_family != AF_INET) return 0;
        a->in4.sin_addr = from->in4.sin_addr;
        return 1;
    }
    return (ip >> 24) != 0 && ip < 0xE0000000u;
}

/* Insert a node in the list, kept sorted by distance and bounded: the farthest falls off. */
static void add_candidate(struct lookup *L, const addr_t *addr, const uint8_t *id, int hops)
{
    struct candidate c = {.addr = *addr, .has_id = id != NULL, .state = C_NEW, .hops = hops};
    if (id) memcpy(c.id, id, ID_LEN), c.verified = bep42_ok(addr, id);
    for (int i = 0; i < L->n; i++)
        if (same_addr(&L->c[i].addr, addr)) return;
    int pos = L->n;
    while (pos > 0 && closer(L->target, &c, &L->c[pos - 1])) pos--;
    if (pos >= MAX_CANDIDATES) return;
    int last = L->n < MAX_CANDIDATES ? L->n : MAX_CANDIDATES - 1;
    memmove(&L->c[pos + 1], &L->c[pos], (size_t)(last - pos) * sizeof c);
    L->c[pos] = c;
    if (L->n < MAX_CANDIDATES) L->n++;
}

static void add_peer(struct lookup *L, addr_t *addr, const addr_t *from, int hops)
{
    if (!usable(addr, from) || L->npeers >= MAX_PEERS) return;
    for (int i = 0; i < L->npeers; i++)
        if (same_addr(&L->peers[i], addr)) return;
    if (L->npeers == 0) L->first_peer_ms = phase_now_ms(), L->peer_hops = hops;
    L->peers[L->npeers++] = *addr;
}

static int send_query(const int fds[2], struct lookup *L, struct candidate *c)
{
    uint8_t q[192];
    size_t o = 0;
    int fd = fds[c->addr.sa.sa_family == AF_INET6];
    if (fd < 0) return -1;
    c->tid = ++L->next_tid;
    o += (size_t)snprintf((char *)q, sizeof q, "d1:ad2:id20:");
    memcpy(q + o, L->self, ID_LEN), o += ID_LEN;
    memcpy(q + o, "9:info_hash20:", 14), o += 14;
    memcpy(q + o, L->target, ID_LEN), o += ID_LEN;
    if (L->want6) { /* BEP 32; without it a node answers in the family it was asked in */
        const char *want = L->want4 ? "4:wantl2:n42:n6e" : "4:wantl2:n6e";
        memcpy(q + o, want, strlen(want)), o += strlen(want);
    }
    memcpy(q + o, "e1:q9:get_peers2:roi1e1:t2:", 27), o += 27;
    q[o++] = (uint8_t)(c->tid >> 8);
    q[o++] = (uint8_t)c->tid;
    memcpy(q + o, "1:y1:qe", 7), o += 7;
    c->state = C_ASKED;
    c->sent_ms = phase_now_ms();
    L->queries++;
    return sendto(fd, q, o, 0, &c->addr.sa, addr_len(&c->addr)) < 0 ? -1 : 0;
}

/* Take one datagram: a get_peers answer from a node we asked, with our transaction id. */
static void take_answer(struct lookup *L, const uint8_t *p, size_t n, const addr_t *from)
{
    const uint8_t *t, *y, *id, *s;
    size_t tl, yl, idl, sl;
    struct candidate *c = NULL;
    for (int i = 0; i < L->n; i++)
        if (L->c[i].state == C_ASKED && same_addr(&L->c[i].addr, from)) c = &L->c[i];
    if (!c) return;
    if (b_dict_str(p, n, 0, "t", &t, &tl) || tl != 2 || (uint16_t)(t[0] << 8 | t[1]) != c->tid ||
        b_dict_str(p, n, 0, "y", &y, &yl) || yl != 1) {
        L->malformed++;
        return;
    }
    if (y[0] != 'r') { /* an error answer: this node will not help */
        c->state = C_FAILED;
        return;
    }
    long r = b_dict_get(p, n, 0, "r");
    if (r < 0 || b_dict_str(p, n, (size_t)r, "id", &id, &idl) || idl != ID_LEN) {
        L->malformed++;
        c->state = C_FAILED;
        return;
    }
    c->state = C_ANSWERED;
    L->answers++;
    int hops = c->hops;
    if (!c->has_id) { /* a bootstrap node: now placed by its id */
        struct candidate copy = *c;
        int at = (int)(c - L->c);
        memmove(&L->c[at], &L->c[at + 1], (size_t)(L->n - at - 1) * sizeof copy);
        L->n--;
        add_candidate(L, &copy.addr, id, hops);
        for (int i = 0; i < L->n; i++)
            if (same_addr(&L->c[i].addr, &copy.addr)) L->c[i].state = C_ANSWERED;
    }
    static const struct { const char *key; size_t iplen; } lists[] = {{"nodes", 4}, {"nodes6", 16}};
    for (size_t f = 0; f < 2; f++) {
        size_t step = ID_LEN + lists[f].iplen + 2;
        if (b_dict_str(p, n, (size_t)r, lists[f].key, &s, &sl) != 0 || sl % step != 0) continue;
        for (size_t k = 0; k + step <= sl; k += step) {
            addr_t a;
            from_compact(&a, s + k + ID_LEN, lists[f].iplen);
            if (!usable(&a, from) || memcmp(s + k, L->self, ID_LEN) == 0) continue;
            if (!bep42_ok(&a, s + k)) L->unverified++;
            add_candidate(L, &a, s + k, hops + 1);
        }
    }
    long v = b_dict_get(p, n, (size_t)r, "values");
    if (v >= 0 && p[v] == 'l') {
        size_t o = (size_t)v + 1;
        while (o < n && p[o] != 'e') {
            if (b_string(p, n, &o, &s, &sl)) break;
            if (sl != 6 && sl != 18) continue;
            addr_t a;
            from_compact(&a, s, sl - 2);
            add_peer(L, &a, from, hops);
        }
    }
}

/* Whether the CLOSEST nearest nodes that did not fail have all answered (nothing closer to ask). */
static int converged(const struct lookup *L)
{
    int seen = 0;
    for (int i = 0; i < L->n && seen < CLOSEST; i++) {
        if (L->c[i].state == C_FAILED) continue;
        if (L->c[i].state != C_ANSWERED) return 0;
        seen++;
    }
    return 1;
}

static void add_bootstrap(struct lookup *L, const addr_t *a)
{
    add_candidate(L, a, NULL, 1);
    if (a->sa.sa_family == AF_INET6) L->want6 = 1;
    else L->want4 = 1;
}

/* --bootstrap: HOST:PORT items, HOST an IPv4 address, [IPv6] or a DNS name (every address it resolves to).
 * -1 with a message if the text is malformed (a usage error); else the number of nodes, 0 if no name
 * resolved (each failure said on stderr). */
static int parse_bootstrap(struct lookup *L, const char *text, const char *dns)
{
    char buf[1024];
    if (strlen(text) >= sizeof buf) {
        fprintf(stderr, "phase-dht: --bootstrap is longer than %zu bytes\n", sizeof buf - 1);
        return -1;
    }
    snprintf(buf, sizeof buf, "%s", text);
    int items = 0, count = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        char host[PHASE_HOST_MAX], *colon, *end;
        if (++items > MAX_BOOTSTRAP) {
            fprintf(stderr, "phase-dht: --bootstrap names more than %d nodes\n", MAX_BOOTSTRAP);
            return -1;
        }
        if (tok[0] == '[') { /* [IPv6]:PORT */
            char *close = strchr(tok, ']');
            colon = close && close[1] == ':' ? close + 1 : NULL;
            if (colon) *close = 0;
            snprintf(host, sizeof host, "%s", tok + 1);
        } else {
            colon = strrchr(tok, ':');
            if (colon && memchr(tok, ':', (size_t)(colon - tok))) {
                fprintf(stderr, "phase-dht: bootstrap node '%s': an IPv6 address goes in brackets, [ADDR]:PORT\n", tok);
                return -1;
            }
            if (colon) snprintf(host, sizeof host, "%.*s", (int)(colon - tok), tok);
        }
        long port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon[1] == 0 || *end || port < 1 || port > 65535) {
            fprintf(stderr, "phase-dht: bootstrap node '%s' is not HOST:PORT (port 1-65535)\n", tok);
            return -1;
        }
        int kind = phase_host_kind(host);
        if (kind < 0 || (tok[0] == '[' && (kind != 1 || !strchr(host, ':')))) {
            fprintf(stderr, "phase-dht: bootstrap node '%s': '%s' is neither an IP address nor a DNS name\n", tok, host);
            return -1;
        }
        struct sockaddr_storage ss[PHASE_RESOLVE_MAX];
        socklen_t lens[PHASE_RESOLVE_MAX];
        char why[256];
        int n = phase_resolve(dns, host, (int)port, DNS_TIMEOUT_S, ss, lens, PHASE_RESOLVE_MAX, why, sizeof why);
        if (n <= 0) {
            fprintf(stderr, "phase-dht: bootstrap node %s skipped: %s\n", tok, why);
            continue;
        }
        for (int i = 0; i < n; i++) {
            addr_t a;
            memset(&a, 0, sizeof a);
            memcpy(&a, &ss[i], lens[i] <= sizeof a ? lens[i] : sizeof a);
            add_bootstrap(L, &a);
            count++;
        }
    }
    if (items == 0) {
        fprintf(stderr, "phase-dht: --bootstrap names no node\n");
        return -1;
    }
    return count;
}

int phase_dht_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"key", required_argument, 0, 'k'}, {"bootstrap", required_argument, 0, 'b'},
        {"timeout", required_argument, 0, 't'}, {"max-queries", required_argument, 0, 'q'},
        {"info-hash", no_argument, 0, 'i'}, {"target", required_argument, 0, 'T'}, {"source", required_argument, 0, 's'},
        {"dns", required_argument, 0, 'd'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *keypath = NULL, *bootstrap = NULL, *target = NULL, *source = NULL, *dns = NULL;
    int c, timeout_s = 10, max_queries = 100, print_hash = 0;
    static struct lookup L;
    memset(&L, 0, sizeof L);
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'k': keypath = optarg; break;
        case 'b': bootstrap = optarg; break;
        case 't': timeout_s = atoi(optarg); break;
        case 'q': max_queries = atoi(optarg); break;
        case 'i': print_hash = 1; break;
        case 'T': target = optarg; break;
        case 's': source = optarg; break;
        case 'd': dns = optarg; break;
        default: goto usage;
        }
    }
    if (optind != argc || !(keypath || target) || timeout_s < 1 || max_queries < 1 || max_queries > 1000) goto usage;
    if (target) { /* another info-hash, in hex (simulations, diagnostics) */
        if (strlen(target) != 2 * ID_LEN || sodium_hex2bin(L.target, ID_LEN, target, 2 * ID_LEN, NULL, NULL, NULL) != 0)
            goto usage;
        goto lookup;
    }
    uint8_t pk[PHASE_ED25519_PUBLICKEY_BYTES], digest[crypto_hash_sha256_BYTES];
    char why[256];
    if (phase_load_public_key(keypath, pk, why, sizeof why) != 0) {
        fprintf(stderr, "phase-dht: %s\n", why);
        return 2;
    }
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)INFOHASH_PREFIX, sizeof INFOHASH_PREFIX - 1);
    crypto_hash_sha256_update(&st, pk, sizeof pk);
    crypto_hash_sha256_final(&st, digest);
    memcpy(L.target, digest, ID_LEN);
    if (print_hash) {
        for (int i = 0; i < ID_LEN; i++) printf("%02x", L.target[i]);
        printf("\n");
        return 0;
    }
lookup:
    if (!bootstrap) goto usage;
    long long start = phase_now_ms();
    int nboot = parse_bootstrap(&L, bootstrap, dns);
    if (nboot < 0) goto usage;
    if (nboot == 0) {
        fprintf(stderr, "phase-dht: 0 sources: no bootstrap node could be resolved (%s)\n", bootstrap);
        return 1;
    }
    randombytes_buf(L.self, sizeof L.self);
    randombytes_buf(&L.next_tid, sizeof L.next_tid);

    /* one socket per family the bootstrap nodes are in: [0] IPv4, [1] IPv6 */
    int fds[2] = {-1, -1};
    addr_t me;
    memset(&me, 0, sizeof me);
    if (source) { /* one address of a multi-homed machine; simulations give each lookup its own */
        if (inet_pton(AF_INET, source, &me.in4.sin_addr) == 1) me.sa.sa_family = AF_INET;
        else if (inet_pton(AF_INET6, source, &me.in6.sin6_addr) == 1) me.sa.sa_family = AF_INET6;
        else {
            fprintf(stderr, "phase-dht: --source %s: not an IP address\n", source);
            return 2;
        }
    }
    for (int f = 0; f < 2; f++) {
        int family = f ? AF_INET6 : AF_INET;
        if (!(f ? L.want6 : L.want4) || (source && me.sa.sa_family != family)) continue;
        fds[f] = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fds[f] < 0) {
            fprintf(stderr, "phase-dht: %s socket: %s\n", f ? "IPv6" : "IPv4", strerror(errno));
            continue;
        }
        if (f) setsockopt(fds[f], IPPROTO_IPV6, IPV6_V6ONLY, &(int){1}, sizeof(int));
        if (source && bind(fds[f], &me.sa, addr_len(&me)) != 0) {
            fprintf(stderr, "phase-dht: --source %s: %s\n", source, strerror(errno));
            close(fds[f]);
            return 2;
        }
    }
    if (fds[0] < 0 && fds[1] < 0) {
        fprintf(stderr, "phase-dht: 0 sources: no socket for the bootstrap nodes' address family%s\n",
                source ? " (--source is of another family)" : "");
        return 1;
    }
    long long deadline = start + timeout_s * 1000LL;
    uint8_t pkt[MAX_DATAGRAM + 1];
    for (;;) {
        long long now = phase_now_ms();
        int inflight = 0;
        for (int i = 0; i < L.n; i++) {
            if (L.c[i].state == C_ASKED && now - L.c[i].sent_ms >= QUERY_TIMEOUT_MS) L.c[i].state = C_FAILED;
            inflight += L.c[i].state == C_ASKED;
        }
        /* ask the nearest nodes not asked yet, among the CLOSEST nearest still in play */
        int inplay = 0;
        for (int i = 0; i < L.n && inflight < PARALLEL && L.queries < max_queries && inplay < CLOSEST + PARALLEL; i++) {
            if (L.c[i].state == C_FAILED) continue;
            inplay++;
            if (L.c[i].state != C_NEW) continue;
            if (send_query(fds, &L, &L.c[i]) != 0) L.c[i].state = C_FAILED;
            else inflight++;
        }
        if (now >= deadline || inflight == 0) break;
        if (L.npeers > 0 && (converged(&L) || now >= L.first_peer_ms + SETTLE_MS)) break;
        long long wait = deadline - now < QUERY_TIMEOUT_MS ? deadline - now : 100;
        struct pollfd pfd[2] = {{.fd = fds[0], .events = POLLIN}, {.fd = fds[1], .events = POLLIN}};
        if (poll(pfd, 2, (int)wait) <= 0) continue;
        for (int f = 0; f < 2; f++) {
            if (!(pfd[f].revents & POLLIN)) continue;
            addr_t from;
            socklen_t fl = sizeof from;
            ssize_t got = recvfrom(fds[f], pkt, sizeof pkt, 0, &from.sa, &fl);
            if (got <= 0 || got > MAX_DATAGRAM || from.sa.sa_family != (f ? AF_INET6 : AF_INET)) continue;
            take_answer(&L, pkt, (size_t)got, &from);
        }
    }
    for (int f = 0; f < 2; f++)
        if (fds[f] >= 0) close(fds[f]);
    for (int i = 0; i < L.npeers; i++) {
        char ip[INET6_ADDRSTRLEN];
        const addr_t *a = &L.peers[i];
        if (a->sa.sa_family == AF_INET6) {
            inet_ntop(AF_INET6, &a->in6.sin6_addr, ip, sizeof ip);
            printf("http://[%s]:%d\n", ip, ntohs(a->in6.sin6_port));
        } else {
            inet_ntop(AF_INET, &a->in4.sin_addr, ip, sizeof ip);
            printf("http://%s:%d\n", ip, ntohs(a->in4.sin_port));
        }
    }
    fprintf(stderr, "phase-dht: %d source%s after %d queries (%d answered, %d malformed) in %lld ms", L.npeers,
            L.npeers == 1 ? "" : "s", L.queries, L.answers, L.malformed, phase_now_ms() - start);
    if (L.npeers) fprintf(stderr, "; first after %d hops, %lld ms", L.peer_hops, L.first_peer_ms - start);
    if (L.unverified) fprintf(stderr, "; %d nodes named with ids BEP 42 does not vouch for", L.unverified);
    fprintf(stderr, "\n");
    return L.npeers ? 0 : 1;
usage:
    fprintf(stderr, "usage: phase-dht (--key PUB | --target HEX) --bootstrap HOST:PORT[,HOST:PORT...] [--timeout S] "
                    "[--max-queries N] [--source IP] [--dns IP[:PORT]] | phase-dht --key PUB --info-hash\n");
    return 2;
}
