/* phase-fetch: fetch by hash over HTTP from a list of sources, with retries and resume,
 * hashing as the bytes arrive.
 *
 *   phase-fetch --hash sha256:HEX --size N --out FILE [options] URL...
 *   phase-fetch --manifest --out FILE [options] URL...
 *     --retries R        attempts per source (3)
 *     --timeout S        connect, DNS and per-receive timeout (10 s)
 *     --min-rate B       a source slower than B bytes/s over a window is dropped (16384; 0: off)
 *     --rate-window S    that window (15 s)
 *     --socks IP:PORT    every connection goes through this SOCKS5 proxy, names resolved by it
 *     --dns IP[:PORT]    nameserver for names in URLs (default: /etc/resolv.conf)
 *
 * URL is a source base, http://HOST[:PORT][/prefix], HOST an IP or a DNS name; artifacts are
 * at /sha256/<hex> below it, the manifest at /boot/manifest.json. Sources are tried in order;
 * each gets R attempts, and an interrupted transfer resumes with a Range request. A source
 * that trickles is dropped for the next one (a fresh start: bytes from two sources are never
 * mixed, so a bad hash always names the source that sent it). A hash mismatch is retried once
 * from the start on the same source, since bytes can change on the way (seen once in CI: a whole
 * kernel, one connection, wrong hash, under OVMF; cause not found); a second one drops the
 * source. Wrong bytes are never kept either way. Bytes go to FILE.part; FILE appears only once
 * the size and SHA-256 match. The manifest is only size-capped here:
 * phase-verify checks its signature. With --socks nothing but the proxy is ever contacted:
 * no DNS query, no direct connection. Exit 0 ok, 1 every source failed, 2 usage. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bootmanifest.h"
#include "netconn.h"
#include "tools.h"

#define HEADER_MAX 8192

struct url {
    struct phase_endpoint ep;
    char prefix[256];
};

struct job {
    int manifest;
    struct phase_artifact art;
    const char *out;
    char part[4096];
    int timeout_s;
    long long min_rate;  /* bytes/s, 0: no rule */
    int rate_window_s;
    struct phase_route route;
    int mismatches;  /* hash mismatches from the current source */
    char last_error[512];
};

static int parse_url(const char *text, struct url *u, char *why, size_t whylen)
{
    memset(u, 0, sizeof *u);
    if (strncmp(text, "http://", 7) != 0) {
        snprintf(why, whylen, "only http:// sources are supported");
        return -1;
    }
    const char *p = text + 7, *hend, *pstart;
    char *host = u->ep.host;
    if (*p == '[') {
        hend = strchr(p, ']');
        if (!hend || (size_t)(hend - p - 1) >= sizeof u->ep.host) goto bad;
        memcpy(host, p + 1, (size_t)(hend - p - 1));
        p = hend + 1;
    } else {
        hend = p + strcspn(p, ":/");
        if ((size_t)(hend - p) >= sizeof u->ep.host || hend == p) goto bad;
        memcpy(host, p, (size_t)(hend - p));
        p = hend;
    }
    u->ep.port = 80;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port < 1 || port > 65535) goto bad;
        u->ep.port = (int)port;
        p = end;
    }
    pstart = p;
    if (*pstart && *pstart != '/') goto bad;
    snprintf(u->prefix, sizeof u->prefix, "%s", pstart);
    size_t pl = strlen(u->prefix);
    while (pl && u->prefix[pl - 1] == '/')
        u->prefix[--pl] = 0;
    for (const char *c = u->prefix; *c; c++)
        if (*c <= ' ' || *c > '~') goto bad;
    if (phase_host_kind(host) < 0) {
        snprintf(why, whylen, "host '%s' is neither an IP address nor a DNS name", host);
        return -1;
    }
    return 0;
bad:
    snprintf(why, whylen, "malformed URL");
    return -1;
}

static int send_all(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_all(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Find a header's value in the raw header block (case-insensitive name). */
static const char *header(const char *hdrs, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    for (const char *line = strstr(hdrs, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2;
        if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
            const char *v = l + nl + 1;
            while (*v == ' ' || *v == '\t') v++;
            size_t vl = strcspn(v, "\r\n");
            if (vl >= outlen) vl = outlen - 1;
            memcpy(out, v, vl);
            out[vl] = 0;
            return out;
        }
    }
    return NULL;
}

/* Re-hash what an earlier attempt left in FILE.part, so hashing stays incremental across resumes. */
static long long resume_state(int fd, crypto_hash_sha256_state *st, long long cap)
{
    char buf[1 << 16];
    long long have = 0;
    crypto_hash_sha256_init(st);
    if (lseek(fd, 0, SEEK_SET) < 0) return -1;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        crypto_hash_sha256_update(st, (const unsigned char *)buf, (unsigned long long)r);
        have += r;
    }
    if (have > cap) {  /* cannot be ours: start over */
        if (ftruncate(fd, 0)) return -1;
        crypto_hash_sha256_init(st);
        have = 0;
    }
    return have;
}

enum attempt { OK = 0, RETRY = 1, NEXT_SOURCE = 2 };

static enum attempt attempt(struct job *j, const struct url *u, const char *url_text)
{
    char why[300], req[1024], hdrs[HEADER_MAX + 1], val[128];
    char path[400];
    crypto_hash_sha256_state st;
    long long cap = j->manifest ? PHASE_MANIFEST_MAX_BYTES : j->art.size;
    int out = open(j->part, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0) {
        snprintf(j->last_error, sizeof j->last_error, "cannot open %s: %s", j->part, strerror(errno));
        return NEXT_SOURCE;
    }
    long long have = 0;
    crypto_hash_sha256_init(&st);
    if (j->manifest) {
        if (ftruncate(out, 0) != 0)
            have = -1;
    } else {
        have = resume_state(out, &st, cap);
    }
    if (have < 0) {
        snprintf(j->last_error, sizeof j->last_error, "cannot read %s", j->part);
        close(out);
        return NEXT_SOURCE;
    }
    if (j->manifest)
        snprintf(path, sizeof path, "%s/boot/manifest.json", u->prefix);
    else
        snprintf(path, sizeof path, "%s/sha256/%s", u->prefix, j->art.hash + 7);

    enum attempt result = RETRY;
    int retryable = 1;
    int fd = phase_open_stream(&j->route, &u->ep, j->timeout_s, why, sizeof why, &retryable);
    if (fd < 0) {
        if (!retryable) result = NEXT_SOURCE;
        goto fail;
    }
    long long started = phase_now_ms(); /* the response headers must all come within timeout_s of this */
    const char *hfmt = strchr(u->ep.host, ':') ? "[%s]:%d" : "%s:%d";
    char hostport[PHASE_HOST_MAX + 16];
    snprintf(hostport, sizeof hostport, hfmt, u->ep.host, u->ep.port);
    int n;
    if (have > 0)
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: phase-fetch\r\n"
                     "Range: bytes=%lld-\r\nConnection: close\r\n\r\n", path, hostport, have);
    else
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: phase-fetch\r\n"
                     "Connection: close\r\n\r\n", path, hostport);
    if (send_all(fd, req, (size_t)n)) {
        snprintf(why, sizeof why, "send: %s", strerror(errno));
        goto fail_fd;
    }
    /* Read the status line and headers. */
    size_t hl = 0;
    char *body = NULL;
    while (!body) {
        if (hl == HEADER_MAX) {
            snprintf(why, sizeof why, "response headers too long");
            result = NEXT_SOURCE;
            goto fail_fd;
        }
        if (phase_now_ms() - started > j->timeout_s * 1000LL) {
            snprintf(why, sizeof why, "no response headers within %d s", j->timeout_s);
            result = NEXT_SOURCE;
            goto fail_fd;
        }
        ssize_t r = recv(fd, hdrs + hl, HEADER_MAX - hl, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            snprintf(why, sizeof why, "%s before the response headers", r == 0 ? "connection closed" : strerror(errno));
            goto fail_fd;
        }
        hl += (size_t)r;
        hdrs[hl] = 0;
        body = strstr(hdrs, "\r\n\r\n");
    }
    body += 4;
    size_t pre = hl - (size_t)(body - hdrs);
    body[-2] = 0; /* hdrs now holds only the header block, ending in one CRLF */
    int status = 0;
    if (sscanf(hdrs, "HTTP/1.%*d %d", &status) != 1) {
        snprintf(why, sizeof why, "not an HTTP response");
        result = NEXT_SOURCE;
        goto fail_fd;
    }
    if (header(hdrs, "Transfer-Encoding", val, sizeof val)) {
        snprintf(why, sizeof why, "chunked responses are not supported");
        result = NEXT_SOURCE;
        goto fail_fd;
    }
    long long length = -1;
    if (header(hdrs, "Content-Length", val, sizeof val))
        length = strtoll(val, NULL, 10);
    if (status == 206 && have > 0) {
        long long start = -1;
        if (!header(hdrs, "Content-Range", val, sizeof val) || sscanf(val, "bytes %lld-", &start) != 1 || start != have) {
            snprintf(why, sizeof why, "bad Content-Range for resume at %lld", have);
            goto restart;
        }
    } else if (status == 200) {
        if (have > 0) { /* the source ignored our Range: take the whole body again */
            if (ftruncate(out, 0)) goto fail_fd;
            crypto_hash_sha256_init(&st);
            have = 0;
        }
    } else {
        snprintf(why, sizeof why, "HTTP %d", status);
        result = (status == 503 || status == 500) ? RETRY : NEXT_SOURCE;
        if (status == 416) goto restart;
        goto fail_fd;
    }
    if (length >= 0 && have + length > cap) {
        snprintf(why, sizeof why, "source offers %lld bytes, more than the %lld expected", have + length, cap);
        result = NEXT_SOURCE;
        goto restart;
    }
    if (lseek(out, have, SEEK_SET) < 0) goto fail_fd;
    char buf[1 << 16];
    size_t pending = pre;
    const char *chunk = body;
    long long window_start = phase_now_ms(), window_bytes = have;
    for (;;) {
        if (pending) {
            if (have + (long long)pending > cap) {
                snprintf(why, sizeof why, "source sent more than the %lld bytes expected", cap);
                result = NEXT_SOURCE;
                goto restart;
            }
            crypto_hash_sha256_update(&st, (const unsigned char *)chunk, pending);
            if (write_all(out, chunk, pending)) {
                snprintf(why, sizeof why, "write %s: %s", j->part, strerror(errno));
                result = NEXT_SOURCE;
                goto fail_fd;
            }
            have += (long long)pending;
        }
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) { pending = 0; continue; }
        if (r < 0) {
            snprintf(why, sizeof why, "receive: %s after %lld bytes", strerror(errno), have);
            goto fail_fd; /* RETRY: the next attempt resumes */
        }
        if (r == 0) break;
        chunk = buf;
        pending = (size_t)r;
        long long now = phase_now_ms(), span = now - window_start;
        if (j->min_rate > 0 && span >= j->rate_window_s * 1000LL) {
            long long rate = (have + (long long)pending - window_bytes) * 1000 / span;
            if (rate < j->min_rate) {
                snprintf(why, sizeof why, "too slow: %lld bytes/s over %lld s, below the minimum of %lld",
                         rate, span / 1000, j->min_rate);
                result = NEXT_SOURCE;
                goto fail_fd;
            }
            window_start = now;
            window_bytes = have + (long long)pending;
        }
    }
    close(fd);
    if (!j->manifest && have < cap) {
        snprintf(why, sizeof why, "connection closed after %lld of %lld bytes", have, cap);
        close(out);
        goto report;
    }
    if (!j->manifest) {
        uint8_t digest[PHASE_SHA256_BYTES];
        char text[PHASE_HASH_TEXT_BYTES];
        crypto_hash_sha256_final(&st, digest);
        if (sodium_memcmp(digest, j->art.digest, sizeof digest) != 0) {
            phase_hash_text(digest, text);
            j->mismatches++;
            snprintf(why, sizeof why, "hash mismatch: got %s", text);
            close(out);
            unlink(j->part);
            result = j->mismatches < 2 ? RETRY : NEXT_SOURCE;
            goto report;
        }
    }
    if (fsync(out) && errno != EINVAL) { /* tmpfs: fine either way */ }
    close(out);
    if (rename(j->part, j->out) != 0) {
        snprintf(j->last_error, sizeof j->last_error, "rename to %s: %s", j->out, strerror(errno));
        return NEXT_SOURCE;
    }
    fprintf(stderr, "phase-fetch: %s %s: %lld bytes ok\n", url_text, j->manifest ? "manifest" : j->art.hash, have);
    return OK;

restart:
    if (ftruncate(out, 0)) { /* ignore */ }
fail_fd:
    close(fd);
fail:
    close(out);
report:
    snprintf(j->last_error, sizeof j->last_error, "%s: %s", url_text, why);
    fprintf(stderr, "phase-fetch: %s\n", j->last_error);
    return result;
}

int phase_fetch_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"hash", required_argument, 0, 'H'}, {"size", required_argument, 0, 's'},
        {"out", required_argument, 0, 'o'},  {"manifest", no_argument, 0, 'm'},
        {"retries", required_argument, 0, 'r'}, {"timeout", required_argument, 0, 't'},
        {"min-rate", required_argument, 0, 'M'}, {"rate-window", required_argument, 0, 'W'},
        {"socks", required_argument, 0, 'S'}, {"dns", required_argument, 0, 'D'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    struct job j;
    int c, retries = 3;
    const char *hash = NULL;
    long long size = -1;
    memset(&j, 0, sizeof j);
    j.timeout_s = 10;
    j.min_rate = 16384;
    j.rate_window_s = 15;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'H': hash = optarg; break;
        case 's': size = strtoll(optarg, NULL, 10); break;
        case 'o': j.out = optarg; break;
        case 'm': j.manifest = 1; break;
        case 'r': retries = atoi(optarg); break;
        case 't': j.timeout_s = atoi(optarg); break;
        case 'M': j.min_rate = strtoll(optarg, NULL, 10); break;
        case 'W': j.rate_window_s = atoi(optarg); break;
        case 'S':
            if (phase_parse_ip_port(optarg, &j.route.proxy, &j.route.proxylen)) {
                fprintf(stderr, "phase-fetch: --socks %s: want IP:PORT (the proxy itself is never looked up)\n",
                        optarg);
                return 2;
            }
            j.route.socks = 1;
            snprintf(j.route.proxy_text, sizeof j.route.proxy_text, "%s", optarg);
            break;
        case 'D': j.route.dns = optarg; break;
        default: goto usage;
        }
    }
    if (!j.out || optind >= argc || retries < 1 || j.timeout_s < 1 || j.min_rate < 0 || j.rate_window_s < 1)
        goto usage;
    if (!j.manifest) {
        if (!hash || size < 1 || size > PHASE_ARTIFACT_MAX_BYTES || strlen(hash) != 71 ||
            phase_hash_parse(hash, 71, j.art.digest)) goto usage;
        snprintf(j.art.hash, sizeof j.art.hash, "%s", hash);
        j.art.size = size;
    }
    snprintf(j.part, sizeof j.part, "%s.part", j.out);
    unlink(j.part); /* a part file from another artifact must not be resumed */
    snprintf(j.last_error, sizeof j.last_error, "no source given");
    for (int i = optind; i < argc; i++) {
        struct url u;
        char why[256];
        if (parse_url(argv[i], &u, why, sizeof why)) {
            snprintf(j.last_error, sizeof j.last_error, "%s: %s", argv[i], why);
            fprintf(stderr, "phase-fetch: %s\n", j.last_error);
            continue;
        }
        j.mismatches = 0;
        for (int a = 0; a < retries; a++) {
            enum attempt r = attempt(&j, &u, argv[i]);
            if (r == OK) return 0;
            if (r == NEXT_SOURCE) break;
            if (a + 1 < retries) sleep(1);
        }
        unlink(j.part);
    }
    fprintf(stderr, "phase-fetch: every source failed; last: %s\n", j.last_error);
    return 1;
usage:
    fprintf(stderr, "usage: phase-fetch --hash sha256:HEX --size N --out FILE [options] URL...\n"
                    "       phase-fetch --manifest --out FILE [options] URL...\n"
                    "options: --retries R (3)  --timeout S (10)  --min-rate BYTES_PER_S (16384, 0: off)\n"
                    "         --rate-window S (15)  --socks IP:PORT  --dns IP[:PORT]\n"
                    "URL: http://HOST[:PORT][/prefix], HOST an IP address or a DNS name\n");
    return 2;
}
