# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding to the sandbox's C side (csrc/sandbox*.c). Python-facing names live in pyphase.sandbox."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t

from pyphase._core cimport (result_tuple, view_ptr, cstring_array, preopen_array, phase_preopen, phase_result,
                            phase_result_clear, phase_limits,
                            phase_status_name, phase_status,
                            phase_crypto_init, PHASE_STATUS_COUNT)

from pyphase.errors import PhaseError

cdef extern from "sandbox.h" nogil:
    int phase_sandbox_server_main(int argc, char **argv)

    enum:
        PHASE_SANDBOX_MAX_DEPTH

    ctypedef struct phase_sandbox_spare:
        int32_t pid
        uint32_t gen

    ctypedef struct phase_sandbox_slot:
        int sock
        uint32_t depth
        size_t shm_bytes
        phase_sandbox_spare spares[8]
        uint32_t nspares
        uint32_t gen
        int32_t pid
        uint64_t cache_seq
        int32_t last_wait_status
        int64_t last_maxrss_kb
        int64_t last_cpu_us
        uint64_t t_go_ns, t_ready_ns, t_woke_ns, t_confined_ns, t_ran_ns, t_done_ns

    ctypedef struct phase_sandbox_job:
        const uint8_t *module_hash
        const uint8_t *module
        size_t module_len
        const uint8_t *input
        size_t input_len
        const char *entry
        const char *const *argv
        uint32_t argc
        const char *const *envp
        uint32_t envc
        phase_limits limits
        int deterministic
        uint8_t seed[32]
        const phase_preopen *preopens
        uint32_t npreopens
        uint32_t test_action
        uint64_t hard_timeout_ms
        uint32_t spin_us

    uint64_t phase_sandbox_job_shm_bytes(const phase_sandbox_job *job)
    int phase_sandbox_slot_open(phase_sandbox_slot *slot, int sock, const int *shm_fds, uint32_t depth, char *err,
                                size_t errlen)
    void phase_sandbox_slot_close(phase_sandbox_slot *slot)
    int phase_sandbox_slot_ready(phase_sandbox_slot *slot, int timeout_ms, char *err, size_t errlen)
    int phase_sandbox_slot_poll(phase_sandbox_slot *slot)
    int phase_sandbox_slot_run(phase_sandbox_slot *slot, const phase_sandbox_job *job, phase_result *result,
                               char *err, size_t errlen)

cdef extern from "sandbox_proto.h" nogil:
    enum:
        SANDBOX_HEADER_BYTES
        SANDBOX_MIN_SHM_BYTES
        SANDBOX_TEST_NONE
        SANDBOX_TEST_FORBIDDEN_SYSCALL
        SANDBOX_TEST_SEGFAULT
        SANDBOX_TEST_SPIN
        SANDBOX_TEST_EXEC_MMAP
        SANDBOX_TEST_ALLOCATE
        SANDBOX_TEST_FORGE
        SANDBOX_TEST_SNOOP
        SANDBOX_MSG_ADD

    ctypedef struct sandbox_msg:
        uint32_t type
        uint32_t gen
        int32_t pid
        int32_t wait_status
        uint64_t cache_seq
        int64_t maxrss_kb
        int64_t cpu_us

if phase_crypto_init() != 0:
    raise ImportError("libsodium failed to initialise")

from pyphase._core import STATUS_NAMES  # one table of status names, read from the C core
HEADER_BYTES = SANDBOX_HEADER_BYTES
MIN_SHM_BYTES = SANDBOX_MIN_SHM_BYTES
MAX_DEPTH = PHASE_SANDBOX_MAX_DEPTH
# Test-only worker actions (see sandbox_proto.h); the public API never sets them.
TEST_ACTIONS = {
    "forbidden_syscall": SANDBOX_TEST_FORBIDDEN_SYSCALL,
    "segfault": SANDBOX_TEST_SEGFAULT,
    "spin": SANDBOX_TEST_SPIN,
    "exec_mmap": SANDBOX_TEST_EXEC_MMAP,
    "allocate": SANDBOX_TEST_ALLOCATE,
    "forge": SANDBOX_TEST_FORGE,
    "snoop": SANDBOX_TEST_SNOOP,
}


def add_message(uint64_t length):
    """The header of an ADD message (module bytes of ``length`` follow) for the main socket."""
    cdef sandbox_msg m
    memset(&m, 0, sizeof(m))
    m.type = SANDBOX_MSG_ADD
    m.cache_seq = length
    return PyBytes_FromStringAndSize(<char *> &m, sizeof(m))


def server_main(list args):
    """Become the fork server (in a fresh process only: never returns)."""
    cdef int argc = len(args) + 1
    cdef char **argv = <char **> malloc((argc + 1) * sizeof(char *))
    keep = [b"phase-sandboxd"] + [a.encode() for a in args]
    for i in range(argc):
        argv[i] = <char *> keep[i]
    argv[argc] = NULL
    with nogil:
        phase_sandbox_server_main(argc, argv)


cdef class Slot:
    """The parent's end of one worker slot: a socket to the fork server and the shared memory of the slot's
    buffers (one per pre-forked worker). Used by one thread at a time (pyphase.sandbox keeps a free list).
    Takes ownership of ``sock`` and of the ``shm_fds``."""
    cdef phase_sandbox_slot slot
    cdef bint opened

    def __cinit__(self, int sock, list shm_fds):
        cdef char err[256]
        cdef int fds[PHASE_SANDBOX_MAX_DEPTH]
        cdef Py_ssize_t k
        if not 1 <= len(shm_fds) <= PHASE_SANDBOX_MAX_DEPTH:
            raise ValueError(f"a slot has 1 to {PHASE_SANDBOX_MAX_DEPTH} buffers")
        for k in range(len(shm_fds)):
            fds[k] = shm_fds[k]
        err[0] = 0
        if phase_sandbox_slot_open(&self.slot, sock, fds, <uint32_t> len(shm_fds), err, sizeof(err)) != 0:
            phase_sandbox_slot_close(&self.slot)
            raise PhaseError(err.decode("utf-8", "replace"))
        self.opened = True

    def __dealloc__(self):
        if self.opened:
            phase_sandbox_slot_close(&self.slot)
            self.opened = False

    def close(self):
        if self.opened:
            phase_sandbox_slot_close(&self.slot)
            self.opened = False

    @property
    def shm_bytes(self):
        return self.slot.shm_bytes

    @property
    def worker_pid(self):
        """Pid of the worker that runs (or will run) the slot's next job, as reported by the fork server."""
        return self.slot.pid

    @property
    def spares(self):
        """Workers set up (or being set up) and waiting for a job, as far as this slot has heard."""
        return self.slot.nspares

    @property
    def spare_pids(self):
        """Their pids, the next job's worker first."""
        return [self.slot.spares[k].pid for k in range(self.slot.nspares)]

    @property
    def depth(self):
        return self.slot.depth

    def poll(self):
        """Read what the fork server has reported so far, without waiting (updates ``spares``)."""
        if not self.opened:
            raise PhaseError("the sandbox slot is closed")
        if phase_sandbox_slot_poll(&self.slot) != 0:
            raise PhaseError("the sandbox's fork server is gone")

    @property
    def generation(self):
        return self.slot.gen

    @property
    def cache_seq(self):
        return self.slot.cache_seq

    @property
    def last_exit(self):
        """(wait status, peak RSS in KiB, CPU µs) of the last worker reaped."""
        return (self.slot.last_wait_status, self.slot.last_maxrss_kb, self.slot.last_cpu_us)

    @property
    def last_timeline(self):
        """The last job's timeline in ns since "go": (worker woke, confined, job ran, parent got "done", worker
        set up and waiting: negative if it was ready before "go")."""
        cdef uint64_t g = self.slot.t_go_ns
        return (<int64_t> (self.slot.t_woke_ns - g), <int64_t> (self.slot.t_confined_ns - g),
                <int64_t> (self.slot.t_ran_ns - g), <int64_t> (self.slot.t_done_ns - g),
                <int64_t> (self.slot.t_ready_ns - g))

    def ready(self, int timeout_ms):
        """Wait until a fresh worker is there for the slot's next job."""
        cdef char err[256]
        cdef int rc
        err[0] = 0
        if not self.opened:
            raise PhaseError("the sandbox slot is closed")
        with nogil:
            rc = phase_sandbox_slot_ready(&self.slot, timeout_ms, err, sizeof(err))
        if rc != 0:
            raise PhaseError(err.decode("utf-8", "replace"))

    def run(self, bytes module_hash not None, module, const uint8_t[::1] input not None, list argv, list env,
            bytes entry not None, uint64_t memory_bytes, uint64_t fuel, uint64_t timeout_ms, uint64_t output_bytes,
            uint32_t stack_bytes, bint deterministic, bytes seed not None, uint64_t hard_timeout_ms,
            uint32_t test_action=0, uint32_t spin_us=0, list preopens=None):
        """Run one job on this slot's worker with the GIL released. ``module`` is the bytes or None (the
        worker's cache); ``preopens`` (directory fd, guest name bytes, readonly) go to the worker with "go".
        Returns None if the worker lacks the module (call again with the bytes), else the tuple of _core.run."""
        cdef phase_sandbox_job job
        cdef phase_result res
        cdef char err[256]
        cdef list keep = []
        cdef int rc
        cdef const uint8_t[::1] mview
        if not self.opened:
            raise PhaseError("the sandbox slot is closed")
        if len(seed) != 32 or len(module_hash) != 32:
            raise ValueError("seed and module_hash must be 32 bytes")
        memset(&job, 0, sizeof(job))
        err[0] = 0
        job.module_hash = <const uint8_t *> (<char *> module_hash)
        if module is not None:
            mview = module
            job.module = view_ptr(mview)
            job.module_len = mview.shape[0]
            if job.module is NULL:
                job.module = <const uint8_t *> (<char *> module_hash)   # non-NULL marks "bytes given" (0 bytes)
        job.input = view_ptr(input)
        job.input_len = input.shape[0]
        job.entry = <const char *> entry
        job.limits.memory_bytes = memory_bytes
        job.limits.fuel = fuel
        job.limits.timeout_ms = timeout_ms
        job.limits.output_bytes = output_bytes
        job.limits.stack_bytes = stack_bytes
        job.deterministic = deterministic
        memcpy(job.seed, <const char *> seed, 32)
        job.test_action = test_action
        job.hard_timeout_ms = hard_timeout_ms
        job.spin_us = spin_us
        job.argv = <const char *const *> cstring_array(argv, keep)
        job.argc = <uint32_t> len(argv)
        try:
            job.envp = <const char *const *> cstring_array(env, keep)
            job.envc = <uint32_t> len(env)
            if preopens:
                job.preopens = preopen_array(preopens)
                job.npreopens = <uint32_t> len(preopens)
            with nogil:
                rc = phase_sandbox_slot_run(&self.slot, &job, &res, err, sizeof(err))
            if rc == 1:
                return None
            if rc != 0:
                raise PhaseError(err.decode("utf-8", "replace"))
            try:
                return result_tuple(&res, STATUS_NAMES)
            finally:
                phase_result_clear(&res)
        finally:
            free(<void *> job.argv)
            free(<void *> job.envp)
            free(<void *> job.preopens)

    def shm_needed(self, module_len, input_len, strings_len, output_bytes):
        """Shared-memory bytes a job of these sizes needs (module_len 0 when cached)."""
        def a64(v):
            return (v + 63) & ~63
        return HEADER_BYTES + a64(module_len) + a64(input_len) + a64(strings_len) + output_bytes
