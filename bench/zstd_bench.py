"""A real-world long job: zstd -3 of 5.8 MB of text, native against ``phase run --engine auto`` (issue 12's target:
within 2x of native once the module's compiled code is kept), measured in one run.

    python bench/run.py zstd                 # 3 alternating rounds after a cold run
    python bench/run.py zstd --rounds 5 --json

The job is bench/programs/zstd_job.c (stdin to stdout through zstd's streaming API, level 3) built with the zstd
sources of the pinned ``zstandard`` sdist (fetched with pip into the cache, never into the repository): natively
with gcc -O2, and for wasm32-wasi with zig's defaults (-O2) as a user would. The text is that sdist's own sources,
repeated to 5.8 MB. ``phase run`` runs in process (``--no-sandbox``: the sandbox runs wasm3 only so far) with a
fresh data dir: the cold run interprets on wasm3 while the module compiles in the background and keeps the code;
the warm runs start compiled. Reported: the job's own time (the receipt's ``wall_us``) and the whole ``phase run``
process (Python start-up, validation, loading the compiled code, hashing, signing) against native zstd's process.
Outputs are checked byte for byte (by hash) against native zstd's.
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


def run_phase(wasm: Path, text: Path, data_dir: Path, engine: str) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "pyphase", "run", "--no-sandbox", "--json", "--engine", engine]
    cmd += ["--data-dir", str(data_dir), "--stdin", str(wasm)]
    # with bytecode caches, as an installed package has them (with PYTHONDONTWRITEBYTECODE, set in the shells of the
    # machine these figures come from, a fresh checkout never gets them: every process compiles every module)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with open(text, "rb") as stdin:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdin=stdin, capture_output=True, check=True, env=env)
        return time.perf_counter() - t0, json.loads(p.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating native / phase rounds after the cold run")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    src = fetch_sources()
    native, wasm = build(src)
    text = make_input(src)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="phase-zstd-") as tmp:
        data_dir = Path(tmp)
        _, expected = run_native(native, text)
        cold_s, cold = run_phase(wasm, text, data_dir, "auto")
        wasm3_s, wasm3 = run_phase(wasm, text, data_dir / "w3", "wasm3")
        native_s, warm_s, warm = [], [], []
        for _ in range(a.rounds):
            s, h = run_native(native, text)
            native_s.append(s)
            s, doc = run_phase(wasm, text, data_dir, "auto")
            warm_s.append(s)
            warm.append(doc)
            if h != expected:
                errors.append("native output changed between runs")
        for doc in (cold, wasm3, *warm):
            if doc["status"] != "ok" or doc["stdout_hash"] != expected:
                errors.append(
                    f"phase run ({doc['engine']}) ended {doc['status']} or its output differs from native zstd's"
                )
    native_med = statistics.median(native_s)
    job_med = statistics.median(d["wall_us"] for d in warm) / 1e6
    proc_med = statistics.median(warm_s)
    report = {
        "input_bytes": INPUT_BYTES,
        "module_bytes": wasm.stat().st_size,
        "native_s": native_med,
        "wasm3_job_s": wasm3["wall_us"] / 1e6,
        "cold": {"engine": cold["engine"], "job_s": cold["wall_us"] / 1e6, "process_s": cold_s},
        "warm": {"engines": sorted({d["engine"] for d in warm}), "job_s": job_med, "process_s": proc_med},
        "job_vs_native": job_med / native_med,
        "process_vs_native": proc_med / native_med,
        "wasm3_vs_native": wasm3["wall_us"] / 1e6 / native_med,
        "load": os.getloadavg()[0],
        "errors": errors,
    }
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"zstd -3 of {INPUT_BYTES / 1e6:.1f} MB text, module {report['module_bytes'] / 1e6:.1f} MB, load {report['load']:.1f}"
        )
        print(f"  native (gcc -O2) process         {native_med * 1000:8.0f} ms")
        print(
            f"  phase run --engine wasm3, job    {report['wasm3_job_s'] * 1000:8.0f} ms  {report['wasm3_vs_native']:5.1f}x"
        )
        print(
            f"  auto, cold ({cold['engine']}), job      {cold['wall_us'] / 1000:8.0f} ms  (process {cold_s:.1f} s: waits for the compile)"
        )
        print(
            f"  auto, warm ({'/'.join(report['warm']['engines'])}), job  {job_med * 1000:8.0f} ms  {report['job_vs_native']:5.2f}x (target <= {TARGET}x: {'met' if report['job_vs_native'] <= TARGET else 'missed'})"
        )
        print(f"  auto, warm, whole process        {proc_med * 1000:8.0f} ms  {report['process_vs_native']:5.2f}x")
        for e in errors:
            print(f"ERROR: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
