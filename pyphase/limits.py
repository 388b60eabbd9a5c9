"""Job limits: what a job may use, with the defaults and the ceilings a local run accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from pyphase import _core
from pyphase.errors import LimitsError

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2,
               "mib": 1 << 20, "g": 1000**3, "gb": 1000**3, "gib": 1 << 30}
_TIME_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000}

WASM_PAGE = _core.WASM_PAGE
_DEFAULT = _core.DEFAULT_LIMITS     # the C core's defaults (phase_limits_default), the one source
MAX_MEMORY_BYTES = 4 << 30          # wasm32's whole address space
MAX_OUTPUT_BYTES = 1 << 30
MAX_STACK_BYTES = 16 << 20


def parse_size(text: str | int) -> int:
    """Bytes from ``1048576``, ``64MiB``, ``512k`` or ``1.5GiB`` (binary and decimal units)."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise LimitsError(f"not a size: {text!r} (examples: 65536, 64MiB, 512KiB, 1GB)")
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if value < 0:
        raise LimitsError(f"size must not be negative: {text!r}")
    return value


def parse_duration_ms(text: str | int) -> int:
    """Milliseconds from ``2s``, ``500ms``, ``1.5m``; a bare number is seconds."""
    if isinstance(text, int):
        return text * 1000
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match or (match.group(2) and match.group(2) not in _TIME_UNITS):
        raise LimitsError(f"not a duration: {text!r} (examples: 2s, 500ms, 1m)")
    unit = _TIME_UNITS[match.group(2)] if match.group(2) else 1000
    return int(float(match.group(1)) * unit)


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
        if self.memory_bytes > MAX_MEMORY_BYTES:
            raise LimitsError(f"memory_bytes {self.memory_bytes} exceeds wasm32's {MAX_MEMORY_BYTES}")
        if self.output_bytes > MAX_OUTPUT_BYTES:
            raise LimitsError(f"output_bytes {self.output_bytes} exceeds the maximum {MAX_OUTPUT_BYTES}")
        if not 4096 <= self.stack_bytes <= MAX_STACK_BYTES:
            raise LimitsError(f"stack_bytes must be between 4096 and {MAX_STACK_BYTES}, got {self.stack_bytes}")
        if self.fuel >= 1 << 62:
            raise LimitsError("fuel must be below 2**62 (use 0 for unlimited)")

    def replace(self, **changes: Any) -> Limits:
        """A copy with ``changes`` applied (and checked)."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, int]:
        """The manifest/receipt form (``stack_bytes`` is a node-side setting and not included)."""
        return {"memory_bytes": self.memory_bytes, "fuel": self.fuel, "timeout_ms": self.timeout_ms,
                "output_bytes": self.output_bytes}

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
                problems.append(f"{name} {mine or 'unlimited'} exceeds {cap}")
        return problems


_FIELDS = tuple(f.name for f in fields(Limits))
DEFAULT_LIMITS = Limits()
