"""Validate + first run of a deeply nested C module (an interpreter loop with 3,000 switch cases): pyphase against
wasmtime-py in the same run.

A C switch becomes one nested block per case, so this module nests ~3,000 deep; pyphase compiles it whole on a
stack sized for its depth (csrc/phase_stack.c). Each sample is a cold start: pyphase validates, instantiates,
compiles and runs; wasmtime-py compiles (Cranelift), instantiates and runs.

    python bench/run.py deep [--reps N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OPS = 3000
STEPS = 200000


def interpreter_source(ops: int = OPS, steps: int = STEPS) -> str:
    """C source of a bytecode interpreter whose `step` switches over ``ops`` cases of four shapes."""
    cases = []
    for i in range(ops):
        k = (i * 2654435761) & 0xFFFFFFFF
        shape = i % 4
        if shape == 0:
            expr = f"acc = acc + {k}u"
        elif shape == 1:
            expr = f"acc = acc ^ (acc >> {i % 13 + 1})"
        elif shape == 2:
            expr = f"acc = (acc << {i % 7 + 1}) | (acc >> {32 - (i % 7 + 1)})"
        else:
            expr = f"acc = acc * {k | 1}u"
        cases.append(f"        case {i}: {expr}; break;")
    body = "\n".join(cases)
    return f"""#include <stdint.h>
#include <stdio.h>
static uint32_t step(uint32_t acc, uint32_t op) {{
    switch (op) {{
{body}
        default: acc = ~acc; break;
    }}
    return acc;
}}
int main(void) {{
    uint32_t acc = 1, x = 12345;
    for (uint32_t n = 0; n < {steps}u; n++) {{
        x = x * 1103515245u + 12345u;
        acc = step(acc, (x >> 8) % {ops + 1}u);
    }}
    printf("%u\\n", acc);
    return 0;
}}
"""


def interpreter_output(ops: int = OPS, steps: int = STEPS) -> bytes:
    """What the interpreter prints, computed here."""
    m = 0xFFFFFFFF
    acc, x = 1, 12345
    for _ in range(steps):
        x = (x * 1103515245 + 12345) & m
        op = (x >> 8) % (ops + 1)
        if op == ops:
            acc = ~acc & m
            continue
        k = (op * 2654435761) & m
        shape = op % 4
        if shape == 0:
            acc = (acc + k) & m
        elif shape == 1:
            acc ^= acc >> (op % 13 + 1)
        elif shape == 2:
            r = op % 7 + 1
            acc = ((acc << r) | (acc >> (32 - r))) & m
        else:
            acc = (acc * (k | 1)) & m
    return f"{acc}\n".encode()


def build_module(workdir: Path) -> bytes:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from wasm_build import build_c  # the tests' cached zig build

    src = workdir / "interp3000.c"
    src.write_text(interpreter_source())
    return build_c(src).read_bytes()


def pyphase_cold(wasm: bytes) -> tuple[float, bytes]:
    import pyphase

    t0 = time.perf_counter()
    result = pyphase.run(pyphase.Module(wasm))
    return time.perf_counter() - t0, result.stdout


def wasmtime_cold(wasm: bytes, workdir: Path) -> tuple[float, bytes]:
    import wasmtime

    out = workdir / "wasmtime.out"
    t0 = time.perf_counter()
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, wasm)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.stdout_file = str(out)
    store.set_wasi(wasi)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    assert isinstance(start, wasmtime.Func)
    try:
        start(store)
    except wasmtime.ExitTrap as e:
        if e.code != 0:
            raise
    elapsed = time.perf_counter() - t0
    return elapsed, out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="cold starts per engine, alternating (default 5)")
    ap.add_argument("--quick", action="store_true", help="one cold start per engine (a smoke run)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps = 1
    want = interpreter_output()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wasm = build_module(workdir)
        import pyphase

        report["module_bytes"] = len(wasm)
        report["max_nesting_depth"] = pyphase.Module(wasm).info["max_nesting_depth"]
        try:
            import wasmtime  # noqa: F401
            from importlib.metadata import version

            report["wasmtime"] = version("wasmtime")
        except ImportError:
            report["wasmtime"] = None
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.reps):
            t, out = pyphase_cold(wasm)
            if out != want:
                print(f"pyphase printed {out!r}, expected {want!r}", file=sys.stderr)
                return 1
            ours.append(t)
            if report["wasmtime"]:
                t, out = wasmtime_cold(wasm, workdir)
                if out != want:
                    print(f"wasmtime printed {out!r}, expected {want!r}", file=sys.stderr)
                    return 1
                theirs.append(t)
    report["pyphase_ms"] = statistics.median(ours) * 1000
    report["wasmtime_ms"] = statistics.median(theirs) * 1000 if theirs else None
    report["pyphase_vs_wasmtime"] = report["pyphase_ms"] / report["wasmtime_ms"] if theirs else None
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"deep C module: {report['module_bytes']} bytes, nesting depth {report['max_nesting_depth']}, "
        f"{STEPS} interpreter steps; median of {args.reps} cold starts (validate/compile + instantiate + run)"
    )
    print(f"  pyphase      {report['pyphase_ms']:9.1f} ms")
    if theirs:
        print(f"  wasmtime-py  {report['wasmtime_ms']:9.1f} ms   (wasmtime {report['wasmtime']})")
        print(f"  ratio pyphase / wasmtime-py: {report['pyphase_vs_wasmtime']:.2f}")
    else:
        print("  wasmtime-py not installed (pip install wasmtime==50.0.1): no comparison")
    return 0


if __name__ == "__main__":
    sys.exit(main())
