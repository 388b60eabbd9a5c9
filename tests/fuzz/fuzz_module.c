/* libFuzzer target: arbitrary bytes through validation and, when valid, a fully limited job.
 * Whatever the input, the process must neither crash nor trip a sanitizer. Built by build.sh. */
#include <stdint.h>
#include <string.h>

#include "phase_core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (phase_crypto_init() != 0)
            __builtin_trap();
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
    phase_module_free(module);
    return 0;
}
