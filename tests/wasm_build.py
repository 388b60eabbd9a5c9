"""Build test wasm from C (zig's wasm32-wasi toolchain from PyPI) and WAT (wabt's wat2wasm), cached by content."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CACHE = TESTS / ".wasm-cache"
PROGRAMS = TESTS / "programs"
ZIG_DEFAULT = ("-O2",)  # what users' modules come with
ZIG_MVP = ("-O2", "-mcpu=mvp")


def _cached(key_parts: list[bytes], suffix: str) -> Path:
    h = hashlib.sha256(b"\0".join(key_parts)).hexdigest()[:24]
    CACHE.mkdir(exist_ok=True)
    return CACHE / f"{h}{suffix}"


def build_c(source: str | Path, flags: tuple[str, ...] = ZIG_DEFAULT) -> Path:
    """Compile a C file (a name under tests/programs/ or a path) to wasm32-wasi; cached."""
    path = Path(source) if Path(source).is_absolute() else PROGRAMS / source
    out = _cached([path.read_bytes(), " ".join(flags).encode(), b"zig-1"], ".wasm")
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi", *flags, "-o", str(tmp), str(path)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        tmp.replace(out)
    return out


def build_wat(text: str) -> bytes:
    """Assemble WAT text with wat2wasm; cached."""
    out = _cached([text.encode(), b"wat-1"], ".wasm")
    if not out.exists():
        if shutil.which("wat2wasm") is None:
            raise RuntimeError("wat2wasm not found: apt-get install wabt")
        src = out.with_suffix(f".{os.getpid()}.wat")
        src.write_text(text)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        try:
            subprocess.run(
                ["wat2wasm", "--enable-all", str(src), "-o", str(tmp)], check=True, capture_output=True, timeout=60
            )
            tmp.replace(out)
        finally:
            src.unlink(missing_ok=True)
    return out.read_bytes()
