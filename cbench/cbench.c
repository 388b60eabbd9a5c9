/* cbench: run the benchmark programs as wasm through Phase's C core (phase_job_run, no Python in
 * between) beside native gcc -O2 builds of the same C sources linked into this binary.
 *
 *   cbench --wasm-dir DIR [--quick] [--reps N] [--fuel N] [--json] [PROGRAM...]
 *       table: program, native ms, phase ms (min and median), ratio, fuel used, checksum check
 *   cbench --wasm-dir DIR --fuel-cost PATH/cbench-nometer [--quick] [--reps N] [PROGRAM...]
 *       metering on (this binary) against metering off (the same code built with -DPHASE_NO_METERING),
 *       measured in alternating blocks in the same run
 *   cbench --wasm-dir DIR --phase-only --raw [--quick] [--reps N] PROGRAM...
 *       one line per program for a parent cbench (used by --fuel-cost)
 *   --native-only: the native side alone (bench/core_bench.py interleaves it with the compiling engine's runs);
 *   --cpu-time: time each run by the thread's CPU clock instead of the wall clock (a loaded machine steals wall
 *       time, not CPU time, from a single-threaded run)
 *
 * Every program prints a checksum line. Native and wasm outputs (and exit codes) must be identical: a
 * mismatch is reported as an error and the exit status is 2, never turned into a number. Timings never
 * fail anything. Each side gets one untimed warm-up run (wasm3 compiles functions lazily on first call;
 * Phase keeps the instance for the next job of the same module, as the Python API does).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "phase_core.h"

/* The native builds: each program's main() renamed by a compile definition (see CMakeLists.txt). */
int native_fib_main(int argc, char **argv);
int native_sha256_main(int argc, char **argv);
int native_sort_main(int argc, char **argv);
int native_matmul_main(int argc, char **argv);
int native_hello_main(void);
static int native_hello(int argc, char **argv)
{
    (void) argc;
    (void) argv;
    return native_hello_main();
}

typedef struct program {
    const char *name;
    const char *wasm;          /* file in --wasm-dir */
    int (*native)(int, char **);
    const char *full_arg;      /* argv[1], NULL for none */
    const char *quick_arg;
    const char *input;         /* stdin */
    int full_reps, quick_reps;
    int compute;               /* part of the compute set (fuel-cost default) */
} program;

static const program PROGRAMS[] = {
    {"fib", "fib.wasm", native_fib_main, "32", "24", "", 7, 3, 1},
    {"sha256", "sha256.wasm", native_sha256_main, "16", "1", "", 5, 3, 1},
    {"sort", "sort.wasm", native_sort_main, "4194304", "131072", "", 5, 3, 1},
    {"matmul", "matmul.wasm", native_matmul_main, "256", "64", "", 7, 3, 1},
    {"hello", "hello.wasm", native_hello, NULL, NULL, "Hello, World", 3000, 300, 0},
    /* the same hello linked with a 64 KiB stack instead of zig's default 16 MiB (less initial memory) */
    {"hello_stack64k", "hello_stack64k.wasm", native_hello, NULL, NULL, "Hello, World", 3000, 300, 0},
};
#define NPROGRAMS (sizeof PROGRAMS / sizeof PROGRAMS[0])

typedef struct options {
    const char *wasm_dir;
    const char *nometer_bin;
    int quick, reps, json, raw, phase_only, native_only;
    uint64_t fuel;
} options;

typedef struct outcome {
    char *out;            /* stdout (malloc'd) */
    size_t out_len;
    int exit_code;
    int ok;               /* the run itself worked (status ok) */
    char message[PHASE_MESSAGE_BYTES + 64];
} outcome;

typedef struct stats {
    double min_ms, median_ms;
    int n;
} stats;

static int mismatches;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

static stats summarize(uint64_t *ns, int n)
{
    stats s = {0, 0, n};
    if (n <= 0)
        return s;
    qsort(ns, (size_t) n, sizeof *ns, cmp_u64);
    s.min_ms = ns[0] / 1e6;
    s.median_ms = (n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2) / 1e6;
    return s;
}

static uint64_t fnv64(const char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t) p[i]) * 1099511628211ull;
    return h;
}

static void outcome_clear(outcome *o)
{
    free(o->out);
    memset(o, 0, sizeof *o);
}

static int same_outcome(const outcome *a, const outcome *b)
{
    return a->ok && b->ok && a->exit_code == b->exit_code && a->out_len == b->out_len
           && memcmp(a->out, b->out, a->out_len) == 0;
}

static void die(const char *what)
{
    fprintf(stderr, "cbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int cpu_time;   /* --cpu-time */

/* What a run is timed by: the monotonic clock, or with --cpu-time the calling thread's CPU clock. */
static uint64_t clock_ns(void)
{
    if (!cpu_time)
        return phase_now_ns();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

/* ---- native: call the renamed main() in this process, stdin and stdout redirected to memfds ---- */

static void native_run(const program *p, int argc, char **argv, outcome *o, uint64_t *ns)
{
    memset(o, 0, sizeof *o);
    fflush(stdout);
    int in_fd = memfd_create("cbench-in", 0), out_fd = memfd_create("cbench-out", 0);
    if (in_fd < 0 || out_fd < 0)
        die("memfd_create");
    size_t in_len = strlen(p->input);
    if (in_len && write(in_fd, p->input, in_len) != (ssize_t) in_len)
        die("write");
    lseek(in_fd, 0, SEEK_SET);
    int saved_in = dup(0), saved_out = dup(1);
    if (saved_in < 0 || saved_out < 0)
        die("dup");
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    clearerr(stdin);
    fseek(stdin, 0, SEEK_SET);     /* drops whatever stdin buffered from the last run */

    uint64_t t0 = clock_ns();
    o->exit_code = p->native(argc, argv);
    fflush(stdout);
    uint64_t t1 = clock_ns();

    dup2(saved_out, 1);
    dup2(saved_in, 0);
    close(saved_out);
    close(saved_in);
    clearerr(stdin);
    off_t len = lseek(out_fd, 0, SEEK_END);
    o->out = malloc((size_t) len + 1);
    if (!o->out || pread(out_fd, o->out, (size_t) len, 0) != len)
        die("reading native stdout");
    o->out_len = (size_t) len;
    o->ok = 1;
    close(in_fd);
    close(out_fd);
    *ns = t1 - t0;
}

/* ---- phase: phase_job_run on a module validated once ---- */

static void phase_run(const phase_module *m, const options *opt, const program *p, int argc, char **argv,
                      outcome *o, uint64_t *ns, uint64_t *fuel)
{
    memset(o, 0, sizeof *o);
    phase_job_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.module = m;
    spec.argv = (const char *const *) argv;
    spec.argc = (uint32_t) argc;
    spec.input = (const uint8_t *) p->input;
    spec.input_len = strlen(p->input);
    phase_limits_default(&spec.limits);
    spec.limits.timeout_ms = 0;   /* benchmarks measure long runs; no wall-clock limit */
    spec.limits.fuel = opt->fuel;
    phase_result r;
    uint64_t t0 = clock_ns();
    phase_job_run(&spec, &r);
    *ns = clock_ns() - t0;
    o->ok = r.status == PHASE_OK;
    o->exit_code = r.exit_code;
    if (!o->ok)
        snprintf(o->message, sizeof o->message, "%s: %s", phase_status_name(r.status), r.message);
    o->out = malloc(r.out_len + 1);
    if (!o->out)
        die("malloc");
    memcpy(o->out, r.out, r.out_len);
    o->out_len = r.out_len;
    *fuel = r.fuel_used;
    phase_result_clear(&r);
}

static phase_module *load_module(const options *opt, const program *p)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", opt->wasm_dir, p->wasm);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cbench: cannot open %s: %s (build it with cbench/run.sh)\n", path, strerror(errno));
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *bytes = malloc((size_t) len + 1);
    if (!bytes || fread(bytes, 1, (size_t) len, f) != (size_t) len)
        die(path);
    fclose(f);
    char err[512];
    phase_module *m = phase_module_new(bytes, (size_t) len, err, sizeof err);
    free(bytes);
    if (!m) {
        fprintf(stderr, "cbench: %s is not a valid module: %s\n", path, err);
        exit(1);
    }
    return m;
}

static int program_argv(const options *opt, const program *p, char **argv)
{
    argv[0] = (char *) p->name;
    const char *arg = opt->quick ? p->quick_arg : p->full_arg;
    argv[1] = (char *) arg;
    argv[2] = NULL;
    return arg ? 2 : 1;
}

static int program_reps(const options *opt, const program *p)
{
    return opt->reps > 0 ? opt->reps : opt->quick ? p->quick_reps : p->full_reps;
}

static void show_line(FILE *f, const char *s, size_t n)
{
    for (size_t i = 0; i < n && s[i] != '\n'; i++)
        fputc(s[i], f);
}

static void mismatch(const program *p, const char *what, const outcome *a, const outcome *b)
{
    mismatches++;
    fprintf(stderr, "cbench: ERROR %s: %s differ\n  native: exit %d, ", p->name, what, a->exit_code);
    show_line(stderr, a->out, a->out_len);
    fprintf(stderr, "\n  phase:  exit %d %s, ", b->exit_code, b->ok ? "" : b->message);
    show_line(stderr, b->out, b->out_len);
    fprintf(stderr, "\n");
}

static void json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void fmt_ms(char *buf, size_t n, double ms)
{
    if (ms >= 100)
        snprintf(buf, n, "%.1f", ms);
    else if (ms >= 1)
        snprintf(buf, n, "%.2f", ms);
    else
        snprintf(buf, n, "%.4f", ms);
}

/* ---- modes ------------------------------------------------------------------------------------ */

typedef struct row {
    const program *p;
    stats native, phase;
    uint64_t fuel;
    int match;
    outcome ref;          /* the native outcome (or the phase one with --phase-only) */
} row;

static void measure(const options *opt, const program *p, row *rw)
{
    char *argv[3];
    int argc = program_argv(opt, p, argv);
    int reps = program_reps(opt, p);
    phase_module *m = load_module(opt, p);
    uint64_t *nat = calloc((size_t) reps, sizeof *nat), *ph = calloc((size_t) reps, sizeof *ph);
    if (!nat || !ph)
        die("calloc");
    memset(rw, 0, sizeof *rw);
    rw->p = p;
    rw->match = 1;

    outcome native_ref = {0}, phase_ref = {0}, o;
    uint64_t ns, fuel = 0;
    /* warm-up runs, which also give the reference outputs */
    if (!opt->phase_only)
        native_run(p, argc, argv, &native_ref, &ns);
    if (opt->native_only) {
        phase_ref.ok = native_ref.ok;
        phase_ref.exit_code = native_ref.exit_code;
        phase_ref.out = malloc(native_ref.out_len + 1);
        if (!phase_ref.out)
            die("malloc");
        memcpy(phase_ref.out, native_ref.out, native_ref.out_len);
        phase_ref.out_len = native_ref.out_len;
    } else
        phase_run(m, opt, p, argc, argv, &phase_ref, &ns, &fuel);
    if (!phase_ref.ok) {
        fprintf(stderr, "cbench: ERROR %s: the job failed: %s\n", p->name, phase_ref.message);
        mismatches++;
        rw->match = 0;
    } else if (!opt->phase_only && !same_outcome(&native_ref, &phase_ref)) {
        mismatch(p, "native and wasm outputs", &native_ref, &phase_ref);
        rw->match = 0;
    }
    rw->fuel = fuel;
    for (int i = 0; i < reps; i++) {
        /* alternate the two sides so that noise on this shared machine hits both alike */
        if (!opt->phase_only) {
            native_run(p, argc, argv, &o, &nat[i]);
            if (!same_outcome(&native_ref, &o)) {
                mismatch(p, "native outputs of two runs", &native_ref, &o);
                rw->match = 0;
            }
            outcome_clear(&o);
        }
        if (opt->native_only)
            continue;
        phase_run(m, opt, p, argc, argv, &o, &ph[i], &fuel);
        if (!same_outcome(&phase_ref, &o) || fuel != rw->fuel) {
            mismatch(p, "phase outputs (or fuel) of two runs", &phase_ref, &o);
            rw->match = 0;
        }
        outcome_clear(&o);
    }
    if (!opt->phase_only)
        rw->native = summarize(nat, reps);
    if (!opt->native_only)
        rw->phase = summarize(ph, reps);
    rw->ref = phase_ref;
    outcome_clear(&native_ref);
    free(nat);
    free(ph);
    phase_module_free(m);
}

static void print_table(const options *opt, row *rows, int n)
{
    if (opt->json) {
        printf("{\"mode\": \"%s\", \"programs\": [", opt->quick ? "quick" : "full");
        for (int i = 0; i < n; i++) {
            row *r = &rows[i];
            printf("%s\n  {\"name\": \"%s\", \"reps\": %d, \"native_min_ms\": %.6f, \"native_median_ms\": %.6f, "
                   "\"phase_min_ms\": %.6f, \"phase_median_ms\": %.6f, \"fuel\": %llu, \"match\": %s, "
                   "\"compute\": %s, \"output\": ",
                   i ? "," : "", r->p->name, r->phase.n ? r->phase.n : r->native.n, r->native.min_ms, r->native.median_ms, r->phase.min_ms,
                   r->phase.median_ms, (unsigned long long) r->fuel, r->match ? "true" : "false",
                   r->p->compute ? "true" : "false");
            json_string(stdout, r->ref.out, r->ref.out_len);
            printf("}");
        }
        printf("\n], \"mismatches\": %d}\n", mismatches);
        return;
    }
    printf("%-15s %6s %12s %12s %12s %12s %8s %14s  %s\n", "program", "reps", "native min", "native med",
           "phase min", "phase med", "ratio", "fuel", "checksum");
    for (int i = 0; i < n; i++) {
        row *r = &rows[i];
        char a[32], b[32], c[32], d[32];
        fmt_ms(a, sizeof a, r->native.min_ms);
        fmt_ms(b, sizeof b, r->native.median_ms);
        fmt_ms(c, sizeof c, r->phase.min_ms);
        fmt_ms(d, sizeof d, r->phase.median_ms);
        printf("%-15s %6d %9s ms %9s ms %9s ms %9s ms %7.1fx %14llu  %s ", r->p->name, r->phase.n ? r->phase.n : r->native.n, a, b, c, d,
               r->native.median_ms > 0 ? r->phase.median_ms / r->native.median_ms : 0.0,
               (unsigned long long) r->fuel, r->match ? "match:" : "MISMATCH:");
        show_line(stdout, r->ref.out, r->ref.out_len);
        printf("\n");
    }
    printf("(ratio = phase median / native median; native = gcc -O2 of the same source, called in process)\n");
}

/* Warm-up plus reps phase jobs of one program: raw samples in ns, the reference outcome and its fuel. */
static int phase_samples(const options *opt, const program *p, int reps, uint64_t *ns, outcome *ref, uint64_t *fuel)
{
    char *pargv[3];
    int pargc = program_argv(opt, p, pargv);
    phase_module *m = load_module(opt, p);
    outcome o;
    uint64_t t, f;
    int bad = 0;
    phase_run(m, opt, p, pargc, pargv, ref, &t, fuel);     /* warm-up */
    if (!ref->ok) {
        fprintf(stderr, "cbench: ERROR %s: the job failed: %s\n", p->name, ref->message);
        bad = 1;
    }
    for (int i = 0; i < reps && !bad; i++) {
        phase_run(m, opt, p, pargc, pargv, &o, &ns[i], &f);
        if (!same_outcome(ref, &o) || f != *fuel) {
            fprintf(stderr, "cbench: ERROR %s: two runs differ\n", p->name);
            bad = 1;
        }
        outcome_clear(&o);
    }
    phase_module_free(m);
    return bad ? -1 : 0;
}

/* Metering on (this binary) vs off (the -DPHASE_NO_METERING build, a child process: the two builds of
 * wasm3 cannot share one binary), in alternating blocks so that both see the same machine. */
static int fuel_cost(const options *opt, const program **progs, int n)
{
    if (opt->json)
        printf("{\"mode\": \"%s\", \"fuel_cost\": [", opt->quick ? "quick" : "full");
    else
        printf("%-15s %6s %13s %13s %13s %13s %8s\n", "program", "reps", "metered min", "metered med",
               "unmetered min", "unmetered med", "cost");
    double sum_on = 0, sum_off = 0;
    int compute_seen = 0;
    for (int k = 0; k < n; k++) {
        const program *p = progs[k];
        int reps = program_reps(opt, p);
        int blocks = reps >= 3 ? 3 : reps;
        int per = (reps + blocks - 1) / blocks;
        uint64_t *on = calloc((size_t) (per * blocks), sizeof *on), *off = calloc((size_t) (per * blocks), sizeof *off);
        if (!on || !off)
            die("calloc");
        int n_on = 0, n_off = 0;
        for (int b = 0; b < blocks; b++) {
            char cmd[8192];
            snprintf(cmd, sizeof cmd, "'%s' --wasm-dir '%s' --phase-only --raw --reps %d --fuel %llu %s %s",
                     opt->nometer_bin, opt->wasm_dir, per, (unsigned long long) opt->fuel,
                     opt->quick ? "--quick" : "", p->name);
            fflush(stdout);
            FILE *f = popen(cmd, "r");
            if (!f)
                die("popen");
            char name[64];
            unsigned long long h = 0, fuel_off = 0;
            int cnt = 0;
            if (fscanf(f, "%63s %llx %llu %d", name, &h, &fuel_off, &cnt) != 4) {
                fprintf(stderr, "cbench: the metering-off build printed nothing usable for %s\n", p->name);
                exit(1);
            }
            for (int i = 0; i < cnt; i++) {
                unsigned long long v;
                if (fscanf(f, "%llu", &v) == 1 && n_off < per * blocks)
                    off[n_off++] = v;
            }
            if (pclose(f) != 0)
                mismatches++;
            outcome ref;
            uint64_t fuel;
            if (phase_samples(opt, p, per, on + n_on, &ref, &fuel) != 0)
                mismatches++;
            n_on += per;
            if (fnv64(ref.out, ref.out_len) != h) {
                mismatches++;
                fprintf(stderr, "cbench: ERROR %s: metered and unmetered outputs differ\n", p->name);
            }
            outcome_clear(&ref);
        }
        stats son = summarize(on, n_on), soff = summarize(off, n_off);
        double cost = soff.median_ms > 0 ? (son.median_ms / soff.median_ms - 1) * 100 : 0;
        if (p->compute) {
            sum_on += son.median_ms;
            sum_off += soff.median_ms;
            compute_seen++;
        }
        if (opt->json) {
            printf("%s\n  {\"name\": \"%s\", \"reps\": %d, \"metered_min_ms\": %.6f, \"metered_median_ms\": %.6f, "
                   "\"unmetered_min_ms\": %.6f, \"unmetered_median_ms\": %.6f, \"cost_pct\": %.2f, \"compute\": %s}",
                   k ? "," : "", p->name, n_on, son.min_ms, son.median_ms, soff.min_ms, soff.median_ms, cost,
                   p->compute ? "true" : "false");
        } else {
            char a[32], b2[32], c[32], d[32];
            fmt_ms(a, sizeof a, son.min_ms);
            fmt_ms(b2, sizeof b2, son.median_ms);
            fmt_ms(c, sizeof c, soff.min_ms);
            fmt_ms(d, sizeof d, soff.median_ms);
            printf("%-15s %6d %10s ms %10s ms %10s ms %10s ms %+7.1f%%\n", p->name, n_on, a, b2, c, d, cost);
        }
        fflush(stdout);
        free(on);
        free(off);
    }
    double total = sum_off > 0 ? (sum_on / sum_off - 1) * 100 : 0;
    if (opt->json)
        printf("\n], \"compute_cost_pct\": %.2f, \"mismatches\": %d}\n", total, mismatches);
    else if (compute_seen)
        printf("compute set (sum of medians): metering costs %+.1f%% (target <= 15%%); blocks alternate builds\n",
               total);
    if (mismatches)
        fprintf(stderr, "cbench: %d mismatch(es): the numbers above are not valid\n", mismatches);
    return mismatches ? 2 : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: cbench --wasm-dir DIR [--quick] [--reps N] [--fuel N] [--json] "
                    "[--cpu-time] [--fuel-cost NOMETER_BIN | --phase-only [--raw] | --native-only] [PROGRAM...]\n"
                    "programs:");
    for (size_t i = 0; i < NPROGRAMS; i++)
        fprintf(stderr, " %s", PROGRAMS[i].name);
    fprintf(stderr, "\n");
    exit(64);
}

int main(int argc, char **argv)
{
    options opt;
    memset(&opt, 0, sizeof opt);
    const program *progs[NPROGRAMS];
    int n = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--wasm-dir") && i + 1 < argc)
            opt.wasm_dir = argv[++i];
        else if (!strcmp(a, "--fuel-cost") && i + 1 < argc)
            opt.nometer_bin = argv[++i];
        else if (!strcmp(a, "--reps") && i + 1 < argc)
            opt.reps = atoi(argv[++i]);
        else if (!strcmp(a, "--fuel") && i + 1 < argc)
            opt.fuel = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--quick"))
            opt.quick = 1;
        else if (!strcmp(a, "--json"))
            opt.json = 1;
        else if (!strcmp(a, "--raw"))
            opt.raw = 1;
        else if (!strcmp(a, "--phase-only"))
            opt.phase_only = 1;
        else if (!strcmp(a, "--native-only"))
            opt.native_only = 1;
        else if (!strcmp(a, "--cpu-time"))
            cpu_time = 1;
        else if (a[0] == '-')
            usage();
        else {
            size_t k;
            for (k = 0; k < NPROGRAMS && strcmp(PROGRAMS[k].name, a) != 0; k++)
                ;
            if (k == NPROGRAMS || n == (int) NPROGRAMS)
                usage();
            progs[n++] = &PROGRAMS[k];
        }
    }
    if (!opt.wasm_dir)
        usage();
    if (n == 0) {
        for (size_t k = 0; k < NPROGRAMS; k++)
            if (!opt.nometer_bin || PROGRAMS[k].compute)
                progs[n++] = &PROGRAMS[k];
    }
    if (opt.nometer_bin)
        return fuel_cost(&opt, progs, n);

    if (opt.raw) {
        /* for a parent cbench: "name fnv64(stdout) fuel count ns..." per program (raw samples) */
        for (int k = 0; k < n; k++) {
            int reps = program_reps(&opt, progs[k]);
            uint64_t *ns = calloc((size_t) reps + 1, sizeof *ns), fuel = 0;
            outcome ref;
            if (!ns)
                die("calloc");
            if (phase_samples(&opt, progs[k], reps, ns, &ref, &fuel) != 0)
                return 2;
            printf("%s %016llx %llu %d", progs[k]->name, (unsigned long long) fnv64(ref.out, ref.out_len),
                   (unsigned long long) fuel, reps);
            for (int i = 0; i < reps; i++)
                printf(" %llu", (unsigned long long) ns[i]);
            printf("\n");
            outcome_clear(&ref);
            free(ns);
        }
        return 0;
    }

    row rows[NPROGRAMS];
    for (int k = 0; k < n; k++)
        measure(&opt, progs[k], &rows[k]);
    print_table(&opt, rows, n);
    for (int k = 0; k < n; k++)
        outcome_clear(&rows[k].ref);
    if (mismatches)
        fprintf(stderr, "cbench: %d checksum mismatch(es): the numbers above are not valid\n", mismatches);
    return mismatches ? 2 : 0;
}
