# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding to the sandbox's C side (csrc/sandbox*.c). Python-facing names live in pyphase.sandbox."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef long ssize_t
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_NOSIGNAL

from pyphase._core cimport *

from pyphase.errors import PhaseError

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
    "open_outside": SANDBOX_TEST_OPEN_OUTSIDE,
    "stream_forge": SANDBOX_TEST_STREAM_FORGE,
    "write_past": SANDBOX_TEST_WRITE_PAST,
    "timer": SANDBOX_TEST_TIMER,
}


def landlock_abi():
    """The kernel's Landlock ABI version (0: none; then sandboxed jobs cannot be given directories)."""
    return phase_sandbox_landlock_abi()


# Slot.run's answer when a wasmtime job's module is not compiled in the fork server yet (see Slot.run).
NOT_COMPILED = "not_compiled"


def add_message(uint64_t length, int compile_index=-1, uint64_t code_len=0):
    """The header of an ADD message (module bytes of ``length`` follow) for the main socket; with
    ``compile_index`` >= 0 the fork server also has the module compiled for that engine configuration
    (pyphase.compiled.configuration) by a compile helper, or loads the ``code_len`` bytes of compiled code that
    follow the module's (read from the disk cache). Each such ADD is answered by one event (:func:`parse_event`)."""
    cdef sandbox_msg m
    memset(&m, 0, sizeof(m))
    m.type = SANDBOX_MSG_ADD
    m.cache_seq = length
    m.compile = <uint32_t> (compile_index + 1) if compile_index >= 0 else 0
    m.code_len = code_len
    return PyBytes_FromStringAndSize(<char *> &m, sizeof(m))


#: bytes of one event on the events socket, and of the header before the code in an event's memfd
EVENT_BYTES = sizeof(sandbox_event)
CODE_HEADER_BYTES = sizeof(sandbox_code_header)
COMPILE_STATUSES = {SANDBOX_COMPILE_OK: "ok", SANDBOX_COMPILE_FAILED: "failed", SANDBOX_COMPILE_REFUSED: "refused"}


def parse_event(bytes data):
    """A COMPILED event: (module digest, configuration, status ``ok``/``failed``/``refused``, has code (a memfd
    came with it), compile_seq, compile_us, message). ValueError if it is not one."""
    cdef sandbox_event ev
    if len(data) != sizeof(sandbox_event):
        raise ValueError("not a sandbox event")
    memcpy(&ev, <const char *> data, sizeof(ev))
    if ev.type != SANDBOX_MSG_COMPILED or ev.compile == 0 or ev.status not in COMPILE_STATUSES:
        raise ValueError("not a sandbox event")
    ev.message[sizeof(ev.message) - 1] = 0
    return (PyBytes_FromStringAndSize(<char *> ev.hash, 32), ev.compile - 1, COMPILE_STATUSES[ev.status],
            bool(ev.has_code), ev.compile_seq, ev.compile_us, ev.message.decode("utf-8", "replace"))


def code_length(bytes header):
    """The length of the code after a compile helper's header (checked by the fork server already)."""
    cdef sandbox_code_header h
    if len(header) != sizeof(sandbox_code_header):
        raise ValueError("short code header")
    memcpy(&h, <const char *> header, sizeof(h))
    if h.magic != SANDBOX_CODE_MAGIC or not h.ok:
        raise ValueError("not compiled code")
    return h.len


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


cdef class StopSignal:
    """A job's stop request, shared by the thread that runs it (:meth:`Slot.run`) and any thread that stops it:
    either the run sees the request before its worker gets "go" (no worker runs the job: the run raises), or
    :meth:`request` returns the generation of the worker that got it, for :meth:`Slot.kill`."""
    cdef phase_sandbox_stop stop

    def request(self):
        """Mark the job stopped; the generation of the worker it was last given (0: none yet)."""
        cdef uint32_t gen
        with nogil:
            gen = phase_sandbox_stop_request(&self.stop)
        return gen

    @property
    def requested(self):
        return bool(self.stop.stopped)


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
        cdef int rc
        if not 1 <= len(shm_fds) <= PHASE_SANDBOX_MAX_DEPTH:
            raise ValueError(f"a slot has 1 to {PHASE_SANDBOX_MAX_DEPTH} buffers")
        for k in range(len(shm_fds)):
            fds[k] = shm_fds[k]
        err[0] = 0
        rc = phase_sandbox_slot_open(&self.slot, sock, fds, <uint32_t> len(shm_fds), err, sizeof(err))
        if rc != 0:
            phase_sandbox_slot_close(&self.slot)
        check_rc(rc, err)
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
    def next_generation(self):
        """Generation of the worker the slot's next job goes to (0: none set up yet); see :meth:`kill`."""
        if self.slot.reuse:
            return self.slot.gen
        return self.slot.spares[0].gen if self.slot.nspares else 0

    @property
    def cache_seq(self):
        return self.slot.cache_seq

    @property
    def compile_seq(self):
        """Compiles the fork server had finished (events sent) when it forked the slot's next worker."""
        return self.slot.compile_seq

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

    def kill(self, uint32_t gen):
        """Have the fork server SIGKILL this slot's worker of generation ``gen`` (from any thread; the
        generation of a worker already gone kills nothing). False when the fork server is gone."""
        cdef sandbox_msg m
        cdef ssize_t n
        if not self.opened:
            return False
        memset(&m, 0, sizeof(m))
        m.type = SANDBOX_MSG_KILL
        m.gen = gen
        with nogil:
            n = send(self.slot.sock, &m, sizeof(m), MSG_NOSIGNAL)
        return n == sizeof(m)

    def ready(self, int timeout_ms):
        """Wait until a fresh worker is there for the slot's next job."""
        self._wait_for_worker(False, 0, timeout_ms)

    def renew(self, uint64_t compile_seq, int timeout_ms):
        """Wait until the slot's next worker was forked after the fork server's ``compile_seq``-th compile, having
        the server kill the idle workers forked before it (they lack that code)."""
        self._wait_for_worker(True, compile_seq, timeout_ms)

    cdef _wait_for_worker(self, bint renew, uint64_t compile_seq, int timeout_ms):
        cdef char err[256]
        cdef int rc
        err[0] = 0
        if not self.opened:
            raise PhaseError("the sandbox slot is closed")
        with nogil:
            if renew:
                rc = phase_sandbox_slot_renew(&self.slot, compile_seq, timeout_ms, err, sizeof(err))
            else:
                rc = phase_sandbox_slot_ready(&self.slot, timeout_ms, err, sizeof(err))
        check_rc(rc, err)

    cdef int _fill(self, phase_sandbox_job *j, job, module, list keep, list preopens) except -1:
        """Fill ``j`` from a pyphase.runtime.PreparedJob (``module``: its bytes, or None when the worker has it
        cached; ``preopens``: its directories as (open fd, guest name bytes, readonly)); argv/envp/preopen arrays
        are malloc'd (free them) and what they point to is kept alive in ``keep``."""
        cdef bytes digest = job.digest
        cdef bytes entry = job.entry
        cdef const uint8_t[::1] mview
        cdef const uint8_t[::1] iview = job.input
        if len(digest) != 32:
            raise ValueError("module_hash must be 32 bytes")
        keep += [digest, entry, iview]
        fill_job(job, &j.limits, j.seed, &j.quota)
        j.module_hash = <const uint8_t *> (<char *> digest)
        if module is not None:
            mview = module
            keep.append(mview)
            j.module = view_ptr(mview)
            j.module_len = mview.shape[0]
            if j.module is NULL:
                j.module = j.module_hash   # non-NULL marks "bytes given" (0 bytes)
        j.input = view_ptr(iview)
        j.input_len = iview.shape[0]
        j.entry = <const char *> entry
        j.deterministic = job.deterministic
        j.argv = <const char *const *> cstring_array(job.argv, keep)
        j.argc = <uint32_t> len(job.argv)
        j.envp = <const char *const *> cstring_array(job.envp, keep)
        j.envc = <uint32_t> len(job.envp)
        if preopens:
            keep.append(preopens)
            j.preopens = preopen_array(preopens)
            j.npreopens = <uint32_t> len(preopens)
        return 0

    def run(self, job, module, uint64_t hard_timeout_ms, uint32_t test_action=0, uint32_t spin_us=0,
            list preopens=None, on_output=None, StopSignal stop=None, str engine="wasm3"):
        """Run a pyphase.runtime.PreparedJob on this slot's worker with the GIL released. ``module`` is its
        bytes or None (the worker's cache); ``preopens`` its open directories, sent to the worker with "go";
        ``on_output(stream, bytes) -> bool`` gets the output as the worker writes it (see _core.output_to_python).
        ``stop``: the job's :class:`StopSignal`; requested before a worker got "go", the run raises PhaseError.
        ``engine``: ``wasm3`` or ``wasmtime`` (the worker runs only code the fork server compiled). Returns None if
        the worker lacks the module (call again with the bytes), NOT_COMPILED if a wasmtime job's module is valid
        but not compiled in the fork server (have it compiled, then call again), else the tuple of _core.run."""
        cdef phase_sandbox_job j
        cdef phase_result res
        cdef char err[256]
        cdef list keep = []
        cdef int rc
        if not self.opened:
            raise PhaseError("the sandbox slot is closed")
        memset(&j, 0, sizeof(j))
        err[0] = 0
        try:
            self._fill(&j, job, module, keep, preopens)
            j.test_action = test_action
            j.hard_timeout_ms = hard_timeout_ms
            j.spin_us = spin_us
            j.engine = PHASE_ENGINE_WASMTIME if engine == "wasmtime" else PHASE_ENGINE_WASM3
            if on_output is not None:
                j.output_sink = output_to_python
                j.output_ctx = <void *> on_output
            if stop is not None:
                j.stop = &stop.stop
            with nogil:
                rc = phase_sandbox_slot_run(&self.slot, &j, &res, err, sizeof(err))
            if rc == 1:
                return None
            if rc == 3:
                return NOT_COMPILED
            check_rc(rc, err)
            try:
                return result_tuple(&res, STATUS_NAMES)
            finally:
                phase_result_clear(&res)
        finally:
            free(<void *> j.argv)
            free(<void *> j.envp)
            free(<void *> j.preopens)

    def shm_needed(self, job, bint inline):
        """Shared-memory bytes a prepared job needs (with the module's bytes when ``inline``), as C lays it out."""
        cdef phase_sandbox_job j
        cdef list keep = []
        memset(&j, 0, sizeof(j))
        try:
            self._fill(&j, job, job.data if inline else None, keep, [(-1, g, False) for g in job.guest_names])
            return phase_sandbox_job_shm_bytes(&j)
        finally:
            free(<void *> j.argv)
            free(<void *> j.envp)
            free(<void *> j.preopens)
