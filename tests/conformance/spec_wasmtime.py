"""The spec runner's compiling-engine column: pyphase._spec's interface (Instance, InstantiateError, Trap,
InvokeError) over wasmtime, for ``spec_exec.py --engine wasmtime``.

What a job on the compiling engine gets, as far as the suite can see it: our validator first (``_spec.validate``,
the same verdicts as the wasm3 runner's), then wasmtime 50.0.1's C library from the same wheel, configured as
csrc/phase_wasmtime.c configures its engine without fuel (epoch interruption on, parallel compilation off,
``max_wasm_stack`` 1 MiB, no NaN canonicalisation). It is driven through wasmtime-py's ctypes bindings rather than
our C, because the suite needs what a job never does (long-lived instances, imports between them, calls with raw
arguments); traps read as our engine reports them (wasmtime's trap codes in wasm3's words, as trap_string() in
phase_wasmtime.c). Values cross as raw bits: a signalling NaN is never turned into a Python float.
"""

from __future__ import annotations

import ctypes

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import enter_wasm

from pyphase import _spec

InstantiateError = _spec.InstantiateError


class Trap(Exception):
    pass


class InvokeError(Exception):
    pass


TRAPS = {  # wasmtime's trap codes -> wasm3's trap messages (what our engine reports on either)
    wasmtime.TrapCode.STACK_OVERFLOW: "[trap] stack overflow",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "[trap] out of bounds memory access",
    wasmtime.TrapCode.HEAP_MISALIGNED: "[trap] out of bounds memory access",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "[trap] undefined element",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "[trap] null table element",
    wasmtime.TrapCode.BAD_SIGNATURE: "[trap] indirect call type mismatch",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "[trap] integer overflow",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "[trap] integer divide by zero",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "[trap] invalid conversion to integer",
    wasmtime.TrapCode.UNREACHABLE: "[trap] unreachable executed",
}
KINDS = {  # wasmtime value kind -> the runner's type letter
    ffi.WASMTIME_I32.value: "i",
    ffi.WASMTIME_I64.value: "I",
    ffi.WASMTIME_F32.value: "f",
    ffi.WASMTIME_F64.value: "F",
}
LETTER_KIND = {letter: kind for kind, letter in KINDS.items()}
SPECTEST = {
    "print": [],
    "print_i32": [wasmtime.ValType.i32()],
    "print_i64": [wasmtime.ValType.i64()],
    "print_f32": [wasmtime.ValType.f32()],
    "print_f64": [wasmtime.ValType.f64()],
    "print_i32_f32": [wasmtime.ValType.i32(), wasmtime.ValType.f32()],
    "print_f64_f64": [wasmtime.ValType.f64(), wasmtime.ValType.f64()],
}


def _engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.consume_fuel = False
    config.epoch_interruption = True
    config.max_wasm_stack = 1 << 20
    config.parallel_compilation = False
    config.cranelift_nan_canonicalization = False
    return wasmtime.Engine(config)


class _World:
    """One file's store and linker: the suite's instances import from each other, so they share a store."""

    def __init__(self) -> None:
        self.engine = _engine()
        self.store = wasmtime.Store(self.engine)
        self.store.set_epoch_deadline(1 << 62)  # no deadline: the runner's per-file timeout ends a hang
        self.linker = wasmtime.Linker(self.engine)
        self.linker.allow_shadowing = True
        for name, params in SPECTEST.items():
            self.linker.define_func("spectest", name, wasmtime.FuncType(params, []), lambda *args: None)


_world: _World | None = None


def _trap_text(trap: wasmtime.Trap) -> str:
    code = trap.trap_code
    return TRAPS.get(code, f"[trap] {trap.message}") if code is not None else f"[trap] {trap.message}"


class Instance:
    """A module instantiated on wasmtime after our validator; ``registry`` maps names to earlier Instances."""

    def __init__(self, wasm: bytes, registry=None, stack_bytes: int = 0) -> None:
        global _world
        if _world is None:
            _world = _World()
        self.world = _world
        _spec.validate(wasm)  # InstantiateError: invalid or unsupported, as on wasm3
        for name, other in (registry or {}).items():
            self.world.linker.define_instance(self.world.store, name, other.instance)
        try:
            module = wasmtime.Module(self.world.engine, wasm)
        except wasmtime.WasmtimeError as e:
            raise InstantiateError("error", f"wasmtime cannot compile the module: {e}") from None
        try:
            self.instance = self.world.linker.instantiate(self.world.store, module)
        except wasmtime.Trap as e:
            raise InstantiateError("trap", _trap_text(e)) from None
        except wasmtime.WasmtimeError as e:
            text = str(e)
            status = "unlinkable" if "unknown import" in text or "incompatible import type" in text else "trap"
            raise InstantiateError(status, text.splitlines()[0]) from None

    def _export(self, name: str | bytes):
        key = name.decode("utf-8") if isinstance(name, bytes) else name
        found = self.instance.exports(self.world.store).get(key)
        if found is None:
            raise InvokeError(f"no export named {key!r}")
        return found

    def invoke(self, name: str | bytes, args=(), arg_types: str | None = None) -> list[tuple[str, int]]:
        func = self._export(name)
        if not isinstance(func, wasmtime.Func):
            raise InvokeError(f"{name!r} is not a function")
        ty = func.type(self.world.store)
        if len(args) != len(ty.params):
            raise InvokeError(f"{name!r} takes {len(ty.params)} arguments, given {len(args)}")
        params = (ffi.wasmtime_val_t * max(1, len(args)))()
        for i, bits in enumerate(args):
            letter = (arg_types or "")[i] if arg_types else "I"
            params[i].kind = LETTER_KIND[letter]
            if letter in "if":
                params[i].of.i32 = ctypes.c_int32(bits & 0xFFFFFFFF).value
            else:
                params[i].of.i64 = ctypes.c_int64(bits & 0xFFFFFFFFFFFFFFFF).value
        results = (ffi.wasmtime_val_t * max(1, len(ty.results)))()
        try:
            with enter_wasm(self.world.store) as trap:
                error = ffi.wasmtime_func_call(
                    self.world.store._context(),
                    ctypes.byref(func._func),
                    params,
                    len(args),
                    results,
                    len(ty.results),
                    trap,
                )
                if error:
                    raise wasmtime.WasmtimeError._from_ptr(error)
        except wasmtime.Trap as e:
            raise Trap(_trap_text(e)) from None
        except wasmtime.WasmtimeError as e:
            raise Trap(f"[trap] {e}") from None
        return [self._bits(results[i]) for i in range(len(ty.results))]

    @staticmethod
    def _bits(raw) -> tuple[str, int]:
        letter = KINDS[raw.kind]
        return (letter, raw.of.i32 & 0xFFFFFFFF) if letter in "if" else (letter, raw.of.i64 & 0xFFFFFFFFFFFFFFFF)

    def get_global(self, name: str | bytes) -> tuple[str, int]:
        glob = self._export(name)
        if not isinstance(glob, wasmtime.Global):
            raise InvokeError(f"{name!r} is not a global")
        raw = ffi.wasmtime_val_t()
        ffi.wasmtime_global_get(self.world.store._context(), ctypes.byref(glob._global), ctypes.byref(raw))
        return self._bits(raw)
