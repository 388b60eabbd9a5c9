/* Running wasm3's recursive compiler on a stack sized for the module's nesting depth.
 *
 * wasm3 compiles a block by recursing in C (~200-220 bytes of native stack per level, measured on x86_64 at -O3;
 * PHASE_COMPILE_STACK_PER_LEVEL keeps a margin over that). A big C switch becomes one block per case, so real
 * interpreters and parsers nest thousands deep. A module nesting deeper than PHASE_LAZY_COMPILE_DEPTH is compiled
 * whole, before its job runs, on a private stack mapped for it: a guard page below, pages touched only as deep
 * as the compiler goes, unmapped afterwards. The switch is a few instructions (no thread, no system call beyond
 * mmap/mprotect/munmap), so it works inside the sandbox worker, whose seccomp policy forbids clone.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "phase_internal.h"

/* phase_stack_call(arg, fn, top): call fn(arg) with the stack pointer at top (16-byte aligned), then return on
 * the caller's stack. The frame pointer register keeps the caller's stack pointer across the call (it is
 * callee-saved in both ABIs). */
void phase_stack_call(void *arg, void (*fn)(void *), void *top);
#if defined(__x86_64__)
__asm__(".text\n"
        ".globl phase_stack_call\n"
        ".hidden phase_stack_call\n"
        ".type phase_stack_call,@function\n"
        "phase_stack_call:\n"
        "    pushq %rbp\n"
        "    movq %rsp, %rbp\n"
        "    movq %rdx, %rsp\n"
        "    callq *%rsi\n"
        "    movq %rbp, %rsp\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size phase_stack_call, .-phase_stack_call\n");
#define PHASE_HAVE_STACK_CALL 1
#elif defined(__aarch64__)
__asm__(".text\n"
        ".globl phase_stack_call\n"
        ".hidden phase_stack_call\n"
        ".type phase_stack_call,%function\n"
        "phase_stack_call:\n"
        "    stp x29, x30, [sp, #-16]!\n"
        "    mov x29, sp\n"
        "    mov sp, x2\n"
        "    blr x1\n"
        "    mov sp, x29\n"
        "    ldp x29, x30, [sp], #16\n"
        "    ret\n"
        ".size phase_stack_call, .-phase_stack_call\n");
#define PHASE_HAVE_STACK_CALL 1
#endif

size_t phase_compile_stack_bytes(uint64_t depth)
{
    if (depth <= PHASE_LAZY_COMPILE_DEPTH)
        return 0;
    size_t page = (size_t) sysconf(_SC_PAGESIZE);
    uint64_t bytes = PHASE_COMPILE_STACK_BASE + depth * PHASE_COMPILE_STACK_PER_LEVEL;
    return (size_t) ((bytes + page - 1) & ~(uint64_t) (page - 1));
}

size_t phase_compile_stack_bound(size_t module_len)
{
    /* A block costs at least 3 bytes of body (opcode, block type, end); the validator caps the depth at 2^18. */
    uint64_t depth = module_len / 3 + 1;
    if (depth > (1u << 18))
        depth = 1u << 18;
    size_t bytes = phase_compile_stack_bytes(depth);
    return bytes ? bytes + (size_t) sysconf(_SC_PAGESIZE) : 0;
}

struct compile_call {
    IM3Module module;
    M3Result result;
};

static void compile_on_stack(void *arg)
{
    struct compile_call *c = arg;
    c->result = m3_CompileModule(c->module);
}

const char *phase_compile_module(IM3Module module, uint32_t depth, M3Result *result)
{
    size_t bytes = phase_compile_stack_bytes(depth);
    if (bytes == 0) {
        *result = m3_CompileModule(module);
        return NULL;
    }
#ifdef PHASE_HAVE_STACK_CALL
    size_t page = (size_t) sysconf(_SC_PAGESIZE);
    uint8_t *base = mmap(NULL, bytes + page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return "the host has no address space for the compile stack of a module this deeply nested";
    if (mprotect(base + page, bytes, PROT_READ | PROT_WRITE) != 0) {
        munmap(base, bytes + page);
        return "the host has no memory for the compile stack of a module this deeply nested";
    }
    struct compile_call call = {.module = module, .result = m3Err_none};
    phase_stack_call(&call, compile_on_stack, base + page + bytes);
    munmap(base, bytes + page);
    *result = call.result;
    return NULL;
#else
    return "unsupported: nesting deeper than the lazy compile depth on this architecture";
#endif
}
