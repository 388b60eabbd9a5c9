# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding to Phase's C job core (csrc/). Python-facing names live in pyphase.runtime."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.errno cimport errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from pyphase._core cimport *

import os

from pyphase.errors import InvalidModule, PhaseError

if phase_crypto_init() != 0:
    raise ImportError("libsodium failed to initialise")

RUNTIME_NAME = PHASE_RUNTIME_NAME.decode()
RUNTIME_VERSION = PHASE_RUNTIME_VERSION.decode()
WASMTIME_VERSION = PHASE_WASMTIME_VERSION.decode()
VALIDATOR_ID = PHASE_VALIDATOR_ID.decode()
MODULE_FACTS = PHASE_MODULE_FACTS
SHA256_ACCELERATED = bool(phase_sha256_accelerated())
WASMTIME_POOL_SLOTS = PHASE_WASMTIME_POOL_SLOTS
ENGINE_CODES = {"wasm3": PHASE_ENGINE_WASM3, "wasmtime": PHASE_ENGINE_WASMTIME}
WASM_PAGE = PHASE_WASM_PAGE
MAX_PREOPENS = PHASE_MAX_PREOPENS
FS_QUOTA_BLOCK = PHASE_FS_QUOTA_BLOCK
MAX_FDS = PHASE_MAX_FDS
cdef phase_limits _defaults
phase_limits_default(&_defaults)
DEFAULT_LIMITS = {"memory_bytes": _defaults.memory_bytes, "fuel": _defaults.fuel, "timeout_ms": _defaults.timeout_ms,
                  "output_bytes": _defaults.output_bytes, "stack_bytes": _defaults.stack_bytes}
STATUS_NAMES = tuple(phase_status_name(<phase_status> i).decode() for i in range(<int> PHASE_STATUS_COUNT))


def wasi_functions():
    """(name, wasm3 signature, implemented) of every WASI preview1 function the host links (others are stubs)."""
    cdef uint32_t i
    return [(phase_wasi_function_at(i).name.decode(), phase_wasi_function_at(i).signature.decode(),
             bool(phase_wasi_function_at(i).implemented)) for i in range(phase_wasi_count())]


cdef class CoreModule:
    """A validated module: its bytes, sha256 and facts. Immutable; safe to share across threads."""
    cdef phase_module *ptr

    def __cinit__(self, const uint8_t[::1] data not None, bytes digest=None, facts=None):
        """Validate ``data``; or, given the ``digest`` and ``facts`` an earlier validation of the same bytes by this
        validator found (an authenticated record: never a stranger's), take them instead (ValueError when they do
        not fit these bytes)."""
        cdef char err[512]
        cdef const uint8_t *p = view_ptr(data)
        cdef size_t n = data.shape[0]
        cdef uint64_t known[PHASE_MODULE_FACTS]
        cdef const uint8_t *h = NULL
        cdef int i
        err[0] = 0
        if facts is None:
            with nogil:
                self.ptr = phase_module_new(p, n, err, sizeof(err))
            if self.ptr is NULL:
                raise InvalidModule(err.decode("utf-8", "replace") or "invalid module")
            return
        if digest is None or len(digest) != 32 or len(facts) != PHASE_MODULE_FACTS:
            raise ValueError("a validation record needs the module's sha256 and every fact")
        for i in range(PHASE_MODULE_FACTS):
            known[i] = facts[i]
        h = digest
        with nogil:
            self.ptr = phase_module_new_validated(p, n, h, known, err, sizeof(err))
        if self.ptr is NULL:
            raise ValueError(err.decode("utf-8", "replace") or "the record does not fit the module")

    def __dealloc__(self):
        if self.ptr is not NULL:
            phase_module_free(self.ptr)
            self.ptr = NULL

    @property
    def digest(self):
        return PyBytes_FromStringAndSize(<char *> self.ptr.hash, 32)

    @property
    def size(self):
        return self.ptr.len

    @property
    def bytes(self):
        return PyBytes_FromStringAndSize(<char *> self.ptr.bytes, self.ptr.len)

    def compile(self, limits, bint deterministic=False):
        """Compile for the compiling engine's configuration that jobs with these limits use (fuel metering, and
        canonical NaNs when deterministic); returns the microseconds it took (0 if compiled already)."""
        cdef phase_limits lim
        cdef char err[512]
        cdef uint64_t us = 0
        cdef int rc
        _limits_of(limits, &lim)
        err[0] = 0
        with nogil:
            rc = phase_wasmtime_compile(self.ptr, &lim, deterministic, &us, err, sizeof(err))
        check_rc(rc, err)
        return us

    def is_compiled(self, limits, bint deterministic=False):
        cdef phase_limits lim
        _limits_of(limits, &lim)
        return bool(phase_wasmtime_is_compiled(self.ptr, &lim, deterministic))

    def serialize(self, limits, bint deterministic=False):
        """The compiled code as bytes (compiling first if needed), to keep on disk."""
        cdef phase_limits lim
        cdef char err[512]
        cdef uint8_t *out = NULL
        cdef size_t n = 0
        cdef int rc
        _limits_of(limits, &lim)
        err[0] = 0
        with nogil:
            rc = phase_wasmtime_serialize(self.ptr, &lim, deterministic, &out, &n, err, sizeof(err))
        check_rc(rc, err)
        try:
            return PyBytes_FromStringAndSize(<char *> out, n)
        finally:
            free(out)

    def deserialize(self, limits, bint deterministic, const uint8_t[::1] data not None):
        """Take compiled code made by serialize() (wasmtime refuses another version's or configuration's)."""
        cdef phase_limits lim
        cdef char err[512]
        cdef const uint8_t *p = view_ptr(data)
        cdef size_t n = data.shape[0]
        cdef int rc
        _limits_of(limits, &lim)
        err[0] = 0
        with nogil:
            rc = phase_wasmtime_deserialize(self.ptr, &lim, deterministic, p, n, err, sizeof(err))
        check_rc(rc, err)

    @property
    def facts(self):
        """What validation found (phase_module_facts): what a record of it keeps."""
        cdef uint64_t out[PHASE_MODULE_FACTS]
        phase_module_facts(self.ptr, out)
        return tuple(out[i] for i in range(PHASE_MODULE_FACTS))

    @property
    def info(self):
        cdef phase_wasm_info *i = &self.ptr.info
        return {
            "memory_initial_bytes": <uint64_t> i.mem_initial_pages * 65536 if i.has_memory else 0,
            "memory_max_bytes": (<uint64_t> i.mem_max_pages * 65536) if (i.has_memory and i.mem_has_max) else None,
            "imported_functions": i.num_imported_functions,
            "defined_functions": i.num_defined_functions,
            "exports": i.num_exports,
            "has_start": bool(i.has_start),
            "max_nesting_depth": i.max_nesting_depth,
            "wasi_imports": [phase_wasi_function_at(b).name.decode() for b in range(phase_wasi_count())
                             if self.ptr.wasi_imports & (1ULL << b)],
        }


def load_wasmtime(str path not None):
    """dlopen wasmtime's C library at ``path`` (once per process); PhaseError with the reason otherwise. Jobs in this
    process instantiate from pooled slots (no mmap per job); a sandbox's fork server loads the library itself and
    never pools."""
    cdef char err[512]
    cdef bytes b = path.encode()
    cdef const char *p = b
    cdef int rc
    err[0] = 0
    with nogil:
        rc = phase_wasmtime_load(p, err, sizeof(err))
    check_rc(rc, err)
    phase_wasmtime_set_pooling(PHASE_WASMTIME_POOL_SLOTS)


cdef inline int _limits_of(object limits, phase_limits *out) except -1:
    out.memory_bytes = limits.memory_bytes
    out.fuel = limits.fuel
    out.timeout_ms = limits.timeout_ms
    out.output_bytes = limits.output_bytes
    out.stack_bytes = limits.stack_bytes
    return 0


def run(CoreModule module not None, job, list preopens=None, on_output=None, str engine="wasm3"):
    """Run a pyphase.runtime.PreparedJob on ``module`` with the GIL released; ``preopens``: its directories as
    (open fd, guest name bytes, readonly); ``on_output(stream, bytes) -> bool``: the output as the module writes
    it (the GIL is taken for each piece; see output_to_python). Returns a tuple:
    (status, exit_code, message, stdout, stderr, fuel_used, wall_us, memory_peak,
     module_sha256, input_sha256, stdout_sha256, stderr_sha256, fs_unavailable, compile_us, fs_limit)."""
    cdef phase_job_spec spec
    cdef phase_result res
    cdef list keep = []
    cdef list argv = job.argv
    cdef list env = job.envp
    cdef bytes entry = job.entry
    cdef const uint8_t[::1] input = job.input
    cdef int rc
    memset(&spec, 0, sizeof(spec))
    fill_job(job, &spec.limits, spec.seed, &spec.quota)
    spec.module = module.ptr
    spec.entry = <const char *> entry
    spec.input = view_ptr(input)
    spec.input_len = input.shape[0]
    spec.deterministic = job.deterministic
    spec.engine = ENGINE_CODES[engine]
    spec.argv = <const char *const *> cstring_array(argv, keep)
    spec.argc = <uint32_t> len(argv)
    try:
        spec.envp = <const char *const *> cstring_array(env, keep)
        spec.envc = <uint32_t> len(env)
        if preopens:
            spec.preopens = preopen_array(preopens)
            spec.npreopens = <uint32_t> len(preopens)
        if on_output is not None:
            spec.output_sink = output_to_python
            spec.output_ctx = <void *> on_output
        with nogil:
            rc = phase_job_run(&spec, &res)
        try:
            return result_tuple(&res, STATUS_NAMES)
        finally:
            phase_result_clear(&res)
    finally:
        free(<void *> spec.argv)
        free(<void *> spec.envp)
        free(<void *> spec.preopens)


def sha256(const uint8_t[::1] data not None):
    """SHA-256 digest computed by the C core (the CPU's SHA instructions, else libsodium), with the GIL released."""
    cdef uint8_t out[32]
    cdef const uint8_t *p = view_ptr(data)
    cdef size_t n = data.shape[0]
    with nogil:
        phase_sha256(p, n, out)
    return PyBytes_FromStringAndSize(<char *> out, 32)


def ed25519_verify(const uint8_t[::1] signature not None, const uint8_t[::1] message not None,
                   const uint8_t[::1] public_key not None):
    """True if signature (64 bytes) is public_key's (32 bytes) Ed25519 signature of message."""
    if signature.shape[0] != 64 or public_key.shape[0] != 32:
        return False
    cdef const uint8_t *m = view_ptr(message)
    cdef size_t n = message.shape[0]
    cdef int rc
    with nogil:
        rc = phase_ed25519_verify(&signature[0], m, n, &public_key[0])
    return rc == 0


SPLICE_ENDS = {PHASE_SPLICE_CLOSED: "closed", PHASE_SPLICE_BYTES: "bytes", PHASE_SPLICE_TIME: "time"}


def splice(int a, int b, uint64_t max_bytes=0, double timeout=-1.0):
    """Copy bytes between the connected sockets ``a`` and ``b`` (descriptors) both ways, with the GIL released,
    until either end closes (``"closed"``; shutting a socket down is how another thread stops it), more than
    ``max_bytes`` would pass (``"bytes"``; 0: no limit) or ``timeout`` seconds pass (``"time"``; < 0: none).
    Returns (why it ended, bytes carried in both directions). Leaves both sockets non-blocking and open."""
    cdef uint64_t carried = 0
    cdef int64_t ms = -1 if timeout < 0 else <int64_t> (timeout * 1000)
    cdef phase_splice_end end
    with nogil:
        end = phase_splice(a, b, max_bytes, ms, &carried)
    if end == PHASE_SPLICE_ERROR:
        raise OSError(errno, os.strerror(errno))
    return SPLICE_ENDS[end], carried
