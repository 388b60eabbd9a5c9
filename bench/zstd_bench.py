"""A real-world long job: zstd -3 of 5.8 MB of text, native against ``phase run --engine auto`` (issue 12's target:
within 2x of native once the module's compiled code is kept), measured in one run.

    python bench/run.py zstd                 # a user's first runs, then 3 rotating rounds
    python bench/run.py zstd --rounds 5 --json
    python bench/run.py zstd --rounds 7 --before /path/to/other/venv/bin/python   # another build, same rounds

The job is bench/programs/zstd_job.c (stdin to stdout through zstd's streaming API, level 3) built with the zstd
sources of the pinned ``zstandard`` sdist (fetched with pip into the cache, never into the repository): natively
with gcc -O2, and for wasm32-wasi with zig's defaults (-O2) as a user would. The text is that sdist's own sources,
repeated to 5.8 MB. Each build of ``phase`` gets a fresh data dir and first runs the module as a user would
(``phase run --json``, the sandbox) until a run starts compiled: the first interprets on wasm3 and teaches ``auto``
that the job is long, the next compiles the module meanwhile and keeps the code, and the later ones start compiled
(at most FIRST_RUNS; more is an error). Each round then runs, in an order that rotates from round to round: native zstd; the whole
warm ``phase run --stdin`` process as a user types it (the default: the sandbox); the same with ``--no-sandbox``;
and ``--no-sandbox --json`` (the job's own time, the receipt's ``wall_us``, and its engine). With ``--before PYTHON``
another build's ``phase`` (another venv) runs the same commands in the same rounds. Reported: medians, their ratio
to native zstd's process, and the median of each round's own ratio (both measured moments apart: steadier when the
machine's load drifts). Outputs are checked (by hash) against native zstd's. The same rounds also time the floor of
any front end written in Python (this interpreter: ``python -c pass``, and importing argparse and dataclasses and
reading the input), printed with that floor plus the warm job's own time against native: what is left for everything
else within the target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "bench" / "programs" / "zstd_job.c"
ZSTANDARD = "zstandard==0.23.0"
INPUT_BYTES = 5_800_000
CACHE = Path(os.environ.get("PHASE_BENCH_CACHE", "/var/tmp/phase-bench")) / "zstd"
TARGET = 2.0


def fetch_sources() -> Path:
    """The zstd directory of the pinned sdist (downloaded once with pip)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    name = ZSTANDARD.replace("==", "-")
    src = CACHE / name / "zstd"
    if src.is_dir():
        return src
    tarball = CACHE / f"{name}.tar.gz"
    if not tarball.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", ZSTANDARD],
            cwd=CACHE,
            check=True,
        )
    with tarfile.open(tarball) as tar:
        tar.extractall(CACHE, filter="data")
    return src


def build(src: Path) -> tuple[Path, Path]:
    """(native binary, wasm module), built once per source and job version."""
    key = hashlib.sha256(JOB.read_bytes() + (src / "zstd.c").read_bytes()).hexdigest()[:16]
    native, wasm = CACHE / f"zstd-{key}", CACHE / f"zstd-{key}.wasm"
    if not native.exists():
        subprocess.run(["gcc", "-O2", f"-I{src}", "-o", f"{native}.tmp", str(JOB), str(src / "zstd.c")], check=True)
        os.replace(f"{native}.tmp", native)
    if not wasm.exists():
        cmd = [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi", "-O2", f"-I{src}"]
        subprocess.run([*cmd, "-o", f"{wasm}.tmp", str(JOB), str(src / "zstd.c")], check=True, capture_output=True)
        os.replace(f"{wasm}.tmp", wasm)
    return native, wasm


def make_input(src: Path) -> Path:
    path = CACHE / "input.txt"
    if not path.exists() or path.stat().st_size != INPUT_BYTES:
        text = b"".join(
            p.read_bytes()
            for p in sorted(src.parent.rglob("*"))
            if p.is_file() and p.suffix in {".c", ".h", ".py", ".rst", ".txt"}
        )
        path.write_bytes((text * (INPUT_BYTES // len(text) + 1))[:INPUT_BYTES])
    return path


def run_native(native: Path, text: Path) -> tuple[float, str]:
    with open(text, "rb") as stdin:
        t0 = time.perf_counter()
        out = subprocess.run([str(native)], stdin=stdin, capture_output=True, check=True).stdout
        return time.perf_counter() - t0, "sha256:" + hashlib.sha256(out).hexdigest()


def _env_with_bytecode() -> dict[str, str]:
    """This environment with bytecode caches, as an installed package has them (with PYTHONDONTWRITEBYTECODE, set in
    the shells of the machine these figures come from, a fresh checkout never gets them: every process compiles every
    module)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_phase(
    python: str,
    wasm: Path,
    text: Path,
    data_dir: Path,
    engine: str = "auto",
    *,
    sandbox: bool = False,
    doc: bool = True,
) -> tuple[float, dict]:
    """One fresh ``phase run`` process of ``python``'s pyphase: its seconds and its JSON document (``doc``), else
    the hash of its stdout as ``{"stdout_hash": ...}``."""
    cmd = [python, "-m", "pyphase", "run", "--engine", engine, "--data-dir", str(data_dir), "--stdin", str(wasm)]
    cmd += [] if sandbox else ["--no-sandbox"]
    cmd += ["--json"] if doc else []
    env = _env_with_bytecode()
    with open(text, "rb") as stdin:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdin=stdin, capture_output=True, check=True, env=env)
        took = time.perf_counter() - t0
    if doc:
        return took, json.loads(p.stdout)
    return took, {"status": "ok", "engine": engine, "stdout_hash": "sha256:" + hashlib.sha256(p.stdout).hexdigest()}


#: a user's first runs of the module (``phase run --json``: the sandbox, a fresh data dir), until one starts compiled
FIRST_RUNS = 4

#: what each round runs for one build of phase: name -> (sandbox, JSON document)
PHASE_RUNS = {"sandbox": (True, False), "no-sandbox": (False, False), "no-sandbox --json": (False, True)}

#: what any front end written in Python pays before its own work, in the same rounds: name -> the code run
FLOOR_RUNS = {
    "python -c pass": "pass",
    "python: argparse, dataclasses, stdin read": "import argparse, dataclasses, sys; sys.stdin.buffer.read()",
}


def run_python(python: str, code: str, text: Path) -> float:
    """Seconds of one fresh ``python -c code`` process with the input text on its stdin."""
    with open(text, "rb") as stdin:
        t0 = time.perf_counter()
        subprocess.run([python, "-c", code], stdin=stdin, capture_output=True, check=True, env=_env_with_bytecode())
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rotating rounds after the cold run (default 3)")
    ap.add_argument("--before", metavar="PYTHON", help="also run this Python's phase (another build) in each round")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    src = fetch_sources()
    native, wasm = build(src)
    text = make_input(src)
    errors: list[str] = []
    builds = {"after": sys.executable, **({"before": a.before} if a.before else {})}
    times: dict[str, list[float]] = {"native": []}
    ratios: dict[str, list[float]] = {}
    jobs: dict[str, list[dict]] = {}
    cold: dict[str, dict] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="phase-zstd-") as tmp:
        _, expected = run_native(native, text)
        docs = []
        for build_name, python in builds.items():
            cold[build_name] = []
            for _ in range(FIRST_RUNS):
                s, doc = run_phase(python, wasm, text, Path(tmp) / build_name, sandbox=True)
                cold[build_name].append({"engine": doc["engine"], "job_s": doc["wall_us"] / 1e6, "process_s": s})
                docs.append(doc)
                if doc["engine"] == "wasmtime":
                    break
            else:
                errors.append(f"{build_name}: {FIRST_RUNS} runs of phase run, none started compiled")
        _, wasm3 = run_phase(sys.executable, wasm, text, Path(tmp) / "w3", "wasm3")
        docs.append(wasm3)
        sides = ["native", *FLOOR_RUNS] + [f"{b}: {r}" for b in builds for r in PHASE_RUNS]
        for round_no in range(a.rounds):
            k = round_no % len(sides)
            took = {}
            for side in sides[k:] + sides[:k]:
                if side == "native":
                    took[side], h = run_native(native, text)
                    if h != expected:
                        errors.append("native output changed between runs")
                    continue
                if side in FLOOR_RUNS:
                    took[side] = run_python(sys.executable, FLOOR_RUNS[side], text)
                    continue
                build_name, run_name = side.split(": ")
                sandbox, doc_wanted = PHASE_RUNS[run_name]
                took[side], doc = run_phase(
                    builds[build_name], wasm, text, Path(tmp) / build_name, sandbox=sandbox, doc=doc_wanted
                )
                docs.append(doc)
                if doc_wanted:
                    jobs.setdefault(build_name, []).append(doc)
            for side, seconds in took.items():
                times.setdefault(side, []).append(seconds)
                if side != "native":
                    ratios.setdefault(side, []).append(seconds / took["native"])
            loads.append(os.getloadavg()[0])
        for doc in docs:
            if doc["status"] != "ok" or doc["stdout_hash"] != expected:
                errors.append(
                    f"phase run ({doc['engine']}) ended {doc['status']} or its output differs from native zstd's"
                )
    native_med = statistics.median(times["native"])
    report = {
        "input_bytes": INPUT_BYTES,
        "module_bytes": wasm.stat().st_size,
        "rounds": a.rounds,
        "native_s": native_med,
        "wasm3_job_s": wasm3["wall_us"] / 1e6,
        "wasm3_vs_native": wasm3["wall_us"] / 1e6 / native_med,
        "cold": cold,
        "process_s": {side: statistics.median(v) for side, v in times.items()},
        "process_vs_native": {side: statistics.median(v) / native_med for side, v in times.items()},
        "process_vs_native_per_round": {side: statistics.median(v) for side, v in ratios.items()},
        "warm_job_s": {b: statistics.median(d["wall_us"] for d in v) / 1e6 for b, v in jobs.items()},
        "warm_engines": {b: sorted({d["engine"] for d in v}) for b, v in jobs.items()},
        "load": [min(loads), max(loads)],
        "errors": errors,
    }
    report["job_vs_native"] = {b: s / native_med for b, s in report["warm_job_s"].items()}
    # the least a Python front end could take: the interpreter with what a CLI of this shape imports, then the job
    job_s = report["warm_job_s"].get("after")
    report["python_floor_plus_job_vs_native"] = {
        side: (report["process_s"][side] + job_s) / native_med for side in FLOOR_RUNS if job_s is not None
    }
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"zstd -3 of {INPUT_BYTES / 1e6:.1f} MB text, module {report['module_bytes'] / 1e6:.1f} MB, "
            f"{a.rounds} rounds, load {min(loads):.1f}-{max(loads):.1f}"
        )
        print(f"  native (gcc -O2) process                     {native_med * 1000:8.0f} ms")
        print(
            f"  phase run --engine wasm3, job                {report['wasm3_job_s'] * 1000:8.0f} ms  "
            f"{report['wasm3_vs_native']:5.1f}x"
        )
        for b, runs in cold.items():
            steps = " -> ".join(f"{r['engine']} {r['process_s']:.2f} s (job {r['job_s'] * 1000:.0f} ms)" for r in runs)
            print(f"  {b}: first runs, fresh data dir: {steps}")
        for b, job_s in report["warm_job_s"].items():
            print(
                f"  {b}: auto, warm ({'/'.join(report['warm_engines'][b])}), job       {job_s * 1000:8.0f} ms  "
                f"{report['job_vs_native'][b]:5.2f}x"
            )
        print(f"  whole warm processes (auto){'':19}median   x native  [each round's own]")
        for side in sides[1:]:
            if side in FLOOR_RUNS:
                continue
            print(
                f"  {side:44} {report['process_s'][side] * 1000:6.0f} ms  {report['process_vs_native'][side]:5.2f}x"
                f"  [{report['process_vs_native_per_round'][side]:5.2f}x]"
            )
        print(f"  target: the whole process <= {TARGET}x native's")
        print(f"  the floor of any Python front end (sys.executable){'':4}median   x native  [each round's own]  + job")
        for side in FLOOR_RUNS:
            plus = report["python_floor_plus_job_vs_native"].get(side)
            print(
                f"  {side:44} {report['process_s'][side] * 1000:6.0f} ms  {report['process_vs_native'][side]:5.2f}x"
                f"  [{report['process_vs_native_per_round'][side]:5.2f}x]"
                + (f"  {plus:5.2f}x" if plus is not None else "")
            )
        for e in errors:
            print(f"ERROR: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
