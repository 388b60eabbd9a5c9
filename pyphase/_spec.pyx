# cython: language_level=3, boundscheck=False, wraparound=False
"""Test-support binding for the WebAssembly spec testsuite's execution assertions (csrc/phase_spec.h).

Not part of Phase's job API: tests/conformance/ drives it. Values are raw bits (int), types wasm3's
letters: 'i' i32, 'I' i64, 'f' f32, 'F' f64.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from pyphase._core cimport *

STATUS = {PHASE_SPEC_OK: "ok", PHASE_SPEC_INVALID: "invalid", PHASE_SPEC_UNSUPPORTED: "unsupported",
          PHASE_SPEC_UNLINKABLE: "unlinkable", PHASE_SPEC_TRAP: "trap", PHASE_SPEC_ERROR: "error"}


class InstantiateError(Exception):
    """Instantiation failed; .status is one of invalid, unsupported, unlinkable, trap, error."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Trap(Exception):
    """The invoked function trapped; the message is wasm3's (e.g. "[trap] integer divide by zero")."""


class InvokeError(Exception):
    """The invocation could not run (no such export, argument mismatch, compile error)."""


def validate(bytes wasm not None):
    """Our validator alone, every function import allowed (the compiling engine's runner links modules itself);
    InstantiateError (invalid, unsupported) when it refuses."""
    cdef char err[1024]
    cdef const uint8_t *p = <const uint8_t *> <char *> wasm
    cdef size_t n = len(wasm)
    cdef phase_spec_status st
    err[0] = 0
    with nogil:
        st = phase_spec_validate(p, n, err, sizeof(err))
    if st != PHASE_SPEC_OK:
        raise InstantiateError(STATUS.get(st, "error"), err.decode("utf-8", "replace"))


cdef class Instance:
    """An instantiated module kept alive for a sequence of invocations."""
    cdef phase_spec_instance *ptr
    cdef bytes wasm
    cdef list imports      # instances this one links to: kept alive as long as this one

    def __cinit__(self):
        self.ptr = NULL

    def __init__(self, bytes wasm not None, registry=None, uint32_t stack_bytes=0):
        """registry: a mapping of module name -> Instance whose exports may be imported."""
        cdef char err[1024]
        cdef phase_spec_registry reg
        cdef phase_spec_status st
        cdef phase_spec_instance *out = NULL
        cdef const char **names = NULL
        cdef phase_spec_instance **insts = NULL
        cdef Instance other
        cdef const uint8_t *p = <const uint8_t *> <char *> wasm
        cdef size_t n = len(wasm)
        items = list((registry or {}).items())
        keep = []
        self.imports = []
        reg.count = len(items)
        names = <const char **> malloc((len(items) + 1) * sizeof(char *))
        insts = <phase_spec_instance **> malloc((len(items) + 1) * sizeof(phase_spec_instance *))
        if names == NULL or insts == NULL:
            free(names)
            free(insts)
            raise MemoryError()
        try:
            for k, (name, inst) in enumerate(items):
                other = inst
                b = name.encode() if isinstance(name, str) else bytes(name)
                keep.append(b)
                names[k] = b
                insts[k] = other.ptr
                self.imports.append(other)
            reg.names = names
            reg.instances = insts
            err[0] = 0
            with nogil:
                st = phase_spec_instantiate(p, n, &reg, stack_bytes, &out, err, sizeof(err))
        finally:
            free(names)
            free(insts)
        if st != PHASE_SPEC_OK:
            raise InstantiateError(STATUS.get(st, "error"), err.decode("utf-8", "replace"))
        self.ptr = out
        self.wasm = wasm

    def __dealloc__(self):
        if self.ptr is not NULL:
            phase_spec_free(self.ptr)
            self.ptr = NULL

    def set_call_timeout_ms(self, uint64_t ms):
        phase_spec_set_call_timeout_ms(self.ptr, ms)

    def signature(self, name):
        """The export's signature, e.g. "i(iI)", or None."""
        cdef char sig[1200]
        b = name.encode() if isinstance(name, str) else bytes(name)
        if phase_spec_export_signature(self.ptr, b, len(b), sig, sizeof(sig)) != 0:
            return None
        return sig.decode()

    def invoke(self, name, args=(), arg_types=None):
        """Call an export with raw-bit arguments. Returns [(type letter, bits), ...]; raises Trap or InvokeError."""
        cdef char err[512]
        cdef uint32_t nargs = len(args), nres = 0, i
        cdef uint64_t *a = <uint64_t *> malloc((nargs + 1) * sizeof(uint64_t))
        cdef uint64_t res[64]
        cdef char rtypes[64]
        cdef int rc
        cdef const char *tp = NULL
        cdef const char *np
        cdef size_t nl
        b = name.encode() if isinstance(name, str) else bytes(name)
        np = b
        nl = len(b)
        tb = None
        if a == NULL:
            raise MemoryError()
        try:
            for i in range(nargs):
                a[i] = <uint64_t> (int(args[i]) & 0xFFFFFFFFFFFFFFFF)
            if arg_types is not None:
                tb = arg_types.encode() if isinstance(arg_types, str) else bytes(arg_types)
                if len(tb) != nargs:
                    raise InvokeError("arg_types and args differ in length")
                tp = tb
            err[0] = 0
            with nogil:
                rc = phase_spec_invoke(self.ptr, np, nl, a, tp, nargs, res, rtypes, 64, &nres, err, sizeof(err))
        finally:
            free(a)
        if rc == 1:
            raise Trap(err.decode("utf-8", "replace"))
        if rc != 0:
            raise InvokeError(err.decode("utf-8", "replace"))
        return [(chr(rtypes[i]), res[i]) for i in range(nres)]

    def get_global(self, name):
        """(type letter, bits) of an exported global; raises InvokeError."""
        cdef char err[256]
        cdef uint64_t bits = 0
        cdef char t = 0
        b = name.encode() if isinstance(name, str) else bytes(name)
        err[0] = 0
        if phase_spec_get_global(self.ptr, b, len(b), &bits, &t, err, sizeof(err)) != 0:
            raise InvokeError(err.decode("utf-8", "replace"))
        return (chr(t), bits)
