/* libFuzzer target: arbitrary bytes through validation and, when valid, a fully limited job.
 * Whatever the input, the process must neither crash nor trip a sanitizer. Built by build.sh.
 *
 * With PHASE_WASMTIME_LIBRARY set (the test sets it), every valid module also runs on the compiling engine: compiled
 * here, as the sandbox's fork server does, run here once, and for one input in four run again in a forked child
 * confined like a sandbox worker (the workers' seccomp filter with the epoch timer, compiling forbidden, the epoch
 * advanced by SIGALRM). A child that dies of a signal is a crash. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "phase_core.h"
#include "sandbox.h"

static int jit;

/* exit_group itself: the sanitizers' _exit interceptor makes calls (sigaltstack) no worker makes. */
static void leave(int code)
{
    syscall(SYS_exit_group, code);
    __builtin_unreachable();
}

/* In a forked child: confine as a worker does, run the job on code compiled in the parent, exit with its status. */
static void confined_run(phase_job_spec *spec)
{
    phase_wasmtime_set_compiling(0);
    if (phase_wasmtime_tick_on(SIGALRM) != 0 || prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0
        || phase_sandbox_seccomp_install(0, 1) != 0)
        leave(100);
    struct itimerval it = {.it_interval = {0, 2000}, .it_value = {(time_t) (spec->limits.timeout_ms / 1000),
                                                                  (suseconds_t) (spec->limits.timeout_ms % 1000) * 1000}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        leave(101);
    phase_result result;
    phase_job_run(spec, &result);
    leave((unsigned) result.status < PHASE_STATUS_COUNT ? (int) result.status : 102);
}

static void run_compiled(phase_job_spec *spec, size_t size)
{
    static int reported;
    spec->engine = PHASE_ENGINE_WASMTIME;
    phase_result result;
    phase_job_run(spec, &result);   /* compiles here first, as the fork server does */
    if ((unsigned) result.status >= PHASE_STATUS_COUNT)
        __builtin_trap();
    int compiled = phase_wasmtime_is_compiled((phase_module *) spec->module, &spec->limits, spec->deterministic);
    phase_result_clear(&result);
    if (!compiled || size % 4 != 0)
        return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return;
    if (pid == 0)
        confined_run(spec);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        ;
    if (WIFSIGNALED(st) || WEXITSTATUS(st) >= PHASE_STATUS_COUNT) {
        /* killed (SIGSYS: a call the workers' filter lacks) or failed to confine */
        fprintf(stderr, "fuzz: the confined child %s %d\n", WIFSIGNALED(st) ? "was killed by signal" : "exited with",
                WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        __builtin_trap();
    }
    if (!reported) {
        reported = 1;
        fprintf(stderr, "fuzz: a compiled job ran confined like a sandbox worker (status %d)\n", WEXITSTATUS(st));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (phase_crypto_init() != 0)
            __builtin_trap();
        const char *lib = getenv("PHASE_WASMTIME_LIBRARY");
        char err[256];
        if (lib && *lib) {
            if (phase_wasmtime_load(lib, err, sizeof err) != 0) {
                fprintf(stderr, "fuzz: %s\n", err);
                abort();
            }
            phase_wasmtime_set_ticker(0);   /* no thread to fork after: fuel and the deadline bound jobs here */
            jit = 1;
        }
        ready = 1;
    }
    char err[512];
    phase_module *module = phase_module_new(data, size, err, sizeof err);
    if (!module) {
        if (!err[0])
            __builtin_trap();          /* every refusal must say why */
        return 0;
    }
    static const char *const argv[] = {"fuzz.wasm", "arg"};
    static const char *const envp[] = {"K=V"};
    phase_job_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.module = module;
    spec.argv = argv;
    spec.argc = 2;
    spec.envp = envp;
    spec.envc = 1;
    spec.input = (const uint8_t *) "fuzz input";
    spec.input_len = 10;
    spec.limits.memory_bytes = 16u << 20;
    spec.limits.fuel = 200000;
    spec.limits.timeout_ms = 2000;
    spec.limits.output_bytes = 64u << 10;
    spec.limits.stack_bytes = 64u << 10;
    spec.deterministic = size & 1;
    for (int run = 0; run < 2; run++) {       /* twice: the second run reuses the instance when the first was clean */
        phase_result result;
        phase_job_run(&spec, &result);
        if ((unsigned) result.status >= PHASE_STATUS_COUNT)
            __builtin_trap();
        phase_result_clear(&result);
    }
    if (jit)
        run_compiled(&spec, size);
    phase_module_free(module);
    return 0;
}
