"""Job limits: what a job may use, with the defaults and the ceilings a local run accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from pyphase import _core
from pyphase.errors import LimitsError

_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_TIME_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000}
_AMBIGUOUS = {"k": "K", "m": "M", "g": "G"}

SIZE_RULE = "a size is a number and a unit: B; KB, MB, GB (powers of 1000); KiB, MiB, GiB (powers of 1024)"
DURATION_RULE = "a duration is a number and a unit: ms, s, m (minutes) or h"

WASM_PAGE = _core.WASM_PAGE
_DEFAULT = _core.DEFAULT_LIMITS  # the C core's defaults (phase_limits_default), the one source
MAX_MEMORY_BYTES = 4 << 30  # wasm32's whole address space
MAX_OUTPUT_BYTES = 1 << 30
MAX_STACK_BYTES = 16 << 20


def _number_and_unit(text: str | int, what: str, rule: str, example: str, suggest: tuple[str, ...]) -> tuple[str, str]:
    """``(number, unit)`` of a limit's text; a bare number other than 0 is refused with ``suggest``ed units."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match:
        raise LimitsError(f"not a {what}: {text!r} ({rule}; e.g. {example})")
    number, unit = match.group(1), match.group(2)
    if not unit and float(number) != 0:
        choices = ", ".join(f"{number}{u}" for u in suggest[:-1]) + f" or {number}{suggest[-1]}"
        raise LimitsError(f"{text!r} has no unit: write {choices} ({rule})")
    return number, unit.lower()


def parse_size(text: str | int) -> int:
    """Bytes from ``64MiB``, ``512KB``, ``1.5GiB`` or ``100B``: the unit is required (``0`` alone is 0), so
    ``64`` or ``64M`` is refused with the choices rather than guessed. An ``int`` is a byte count."""
    if isinstance(text, int):
        value = text
    else:
        number, unit = _number_and_unit(text, "size", SIZE_RULE, "64MiB", ("MiB", "KiB", "B"))
        if unit in _AMBIGUOUS:
            letter = _AMBIGUOUS[unit]
            iec, si = _SIZE_UNITS[unit + "ib"], _SIZE_UNITS[unit + "b"]
            raise LimitsError(
                f"{text!r}: the unit {text.strip()[-1]!r} is ambiguous: write {number}{letter}iB "
                f"({int(float(number) * iec):,} bytes) or {number}{letter}B "
                f"({int(float(number) * si):,} bytes)"
            )
        if unit and unit not in _SIZE_UNITS:
            raise LimitsError(f"not a size: {text!r} ({SIZE_RULE})")
        value = int(float(number) * _SIZE_UNITS[unit]) if unit else 0
    if value < 0:
        raise LimitsError(f"size must not be negative: {text!r}")
    return value


def parse_duration_ms(text: str | int) -> int:
    """Milliseconds from ``2s``, ``500ms``, ``1.5m`` or ``1h``: the unit is required (``0`` alone is 0, which
    for a timeout means no limit), so ``5`` is refused rather than guessed."""
    number, unit = _number_and_unit(text, "duration", DURATION_RULE, "2s, 500ms", ("s", "ms", "m"))
    if unit and unit not in _TIME_UNITS:
        raise LimitsError(f"not a duration: {text!r} ({DURATION_RULE}; e.g. 2s, 500ms)")
    return int(float(number) * _TIME_UNITS[unit]) if unit else 0


def format_size(value: int) -> str:
    """Bytes as a person would write them, exactly when an IEC or SI unit fits (``64 MiB``, ``64 MB``),
    else the byte count with the nearest IEC size beside it."""
    if value == 0:
        return "0 B"
    exact = [
        (value // scale, unit)
        for unit, scale in (
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("GB", 1000**3),
            ("MB", 1000**2),
            ("KB", 1000),
        )
        if value % scale == 0
    ]
    if exact:
        number, unit = min(exact, key=lambda e: e[0])  # the shortest exact form: 64 MB, not 62500 KiB
        return f"{number} {unit}"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value:,} bytes ({value / scale:.1f} {unit})"
    return f"{value:,} B"


def format_duration_ms(value: int) -> str:
    """Milliseconds as ``60 s``, ``2 min``, ``250 ms``; 0 is ``no limit``."""
    if value == 0:
        return "no limit"
    for unit, scale in (("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if value % scale == 0:
            return f"{value // scale} {unit}"
    return f"{value} ms" if value < 1000 else f"{value / 1000:g} s"


@dataclass(frozen=True)
class Limits:
    """Hard limits of one job. ``fuel`` and ``timeout_ms`` of 0 mean unlimited."""

    memory_bytes: int = _DEFAULT["memory_bytes"]
    fuel: int = _DEFAULT["fuel"]
    timeout_ms: int = _DEFAULT["timeout_ms"]
    output_bytes: int = _DEFAULT["output_bytes"]
    stack_bytes: int = _DEFAULT["stack_bytes"]

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise LimitsError(f"{name} must be a non-negative integer, got {value!r}")
        if 0 < self.memory_bytes < WASM_PAGE:
            raise LimitsError(
                f"memory_bytes {self.memory_bytes} is less than one WebAssembly page (64 KiB), so "
                f"no module with memory could start: give at least 64KiB (0: no memory at all)"
            )
        if self.memory_bytes > MAX_MEMORY_BYTES:
            raise LimitsError(
                f"memory_bytes {format_size(self.memory_bytes)} exceeds wasm32's whole address space, "
                f"{format_size(MAX_MEMORY_BYTES)}"
            )
        if self.output_bytes > MAX_OUTPUT_BYTES:
            raise LimitsError(
                f"output_bytes {format_size(self.output_bytes)} exceeds the maximum, {format_size(MAX_OUTPUT_BYTES)}"
            )
        if not 4096 <= self.stack_bytes <= MAX_STACK_BYTES:
            raise LimitsError(f"stack_bytes must be between 4096 and {MAX_STACK_BYTES}, got {self.stack_bytes}")
        if self.fuel >= 1 << 62:
            raise LimitsError("fuel must be below 2**62 (use 0 for unlimited)")

    def replace(self, **changes: Any) -> Limits:
        """A copy with ``changes`` applied (and checked)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, int]:
        """The manifest/receipt form (``stack_bytes`` is a node-side setting and not included)."""
        return {
            "memory_bytes": self.memory_bytes,
            "fuel": self.fuel,
            "timeout_ms": self.timeout_ms,
            "output_bytes": self.output_bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Limits:
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise LimitsError(f"unknown limits: {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in data.items()})

    def within(self, ceiling: Limits) -> list[str]:
        """Reasons this limit set exceeds ``ceiling`` (empty when it fits). 0 (unlimited) exceeds any finite ceiling."""
        problems = []
        for name in _FIELDS:
            mine, cap = getattr(self, name), getattr(ceiling, name)
            if cap and (mine == 0 and name in ("fuel", "timeout_ms") or mine > cap):
                problems.append(f"{name} {describe(name, mine)} exceeds the ceiling {describe(name, cap)}")
        return problems


_FIELDS = tuple(f.name for f in fields(Limits))


def describe(name: str, value: int) -> str:
    """One limit's value in its unit: ``256 MiB``, ``60 s``, ``unlimited`` (0 fuel or timeout)."""
    if value == 0 and name in ("fuel", "timeout_ms"):
        return "unlimited"
    if name.endswith("_ms"):
        return format_duration_ms(value)
    if name.endswith("_bytes"):
        return format_size(value)
    return f"{value:,}"


DEFAULT_LIMITS = Limits()
LOCAL_LIMITS = Limits(memory_bytes=MAX_MEMORY_BYTES, timeout_ms=0, output_bytes=MAX_OUTPUT_BYTES)
"""``phase run``'s defaults on your own machine, as ``wasmtime run`` behaves: no wall-clock limit, memory up to wasm32's
whole address space, and output up to the most a job can produce (it is kept whole for the receipt). Nodes keep
:data:`DEFAULT_LIMITS` for strangers' jobs."""
