"""Runs the WebAssembly core spec testsuite's module assertions against our validator (csrc/wasm_validate.c).

Used by test_spec_validation.py and runnable directly to print the per-file table for CONFORMANCE.md:

    python tests/validator/spec_runner.py [--markdown]

Each .wast is converted with Debian wabt's wast2json into a cache directory (never committed; default
$PHASE_VALIDATOR_CACHE or <tmp>/phase-validator-cache). The testsuite (commit 01efde8, 2021) predates reference types
and bulk memory, so wast2json runs with --disable-reference-types --disable-bulk-memory (elem.wast only parses so).

Rules checked per module file:
  * assert_invalid / assert_malformed (binary): must be rejected.
  * assert_malformed (text): wast2json cannot produce a binary for a module whose text does not parse: skipped and
    counted ("text-only").
  * module / assert_unlinkable / assert_uninstantiable: the module is valid per the spec; it must be accepted unless
    it uses a feature wasm3 0.5.0 cannot run, in which case it must be rejected with "unsupported: ".
    Which modules use such features is decided here independently of the validator (a small section walker:
    non-function imports, more than one table or memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPEC_DIR = Path(os.environ.get("PHASE_SPEC_TESTSUITE", REPO.parent / "shared" / "testsuite" / "core"))
WAST2JSON_FLAGS = ["--disable-reference-types", "--disable-bulk-memory"]

# Deliberate deviations from the 2021 testsuite would be listed here as (wast file, module file) -> reason. None is
# needed: the MVP tests of a multi-byte zero call_indirect table index (which we accept, as reference types does)
# are also malformed in their function body size, so they are rejected anyway (see CONFORMANCE.md).
KNOWN_ACCEPTED = {
    # (wast file, module file name) -> reason
}


def cache_dir() -> Path:
    d = os.environ.get("PHASE_VALIDATOR_CACHE")
    return Path(d) if d else Path(tempfile.gettempdir()) / "phase-validator-cache"


def build_cli(out: Path, sanitize: bool = False) -> Path:
    """Compiles tests/validator/validate_cli.c with the validator sources; returns the binary path."""
    srcs = sorted(str(p) for p in (REPO / "csrc").glob("wasm_validate*.c"))
    srcs.append(str(HERE / "validate_cli.c"))
    flags = ["-Wall", "-Wextra", "-Werror", "-O2", "-g", "-I", str(REPO / "csrc")]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", *flags, *srcs, "-o", str(out)], check=True)
    return out


def convert(wast: Path) -> Path:
    """wast2json into the cache (keyed by the .wast content); returns the .json path."""
    digest = hashlib.sha256(wast.read_bytes() + " ".join(WAST2JSON_FLAGS).encode()).hexdigest()[:16]
    d = cache_dir() / f"{wast.stem}-{digest}"
    j = d / f"{wast.stem}.json"
    if not j.exists():
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        subprocess.run(
            ["wast2json", *WAST2JSON_FLAGS, str(wast), "-o", str(tmp / j.name)], check=True, capture_output=True
        )
        try:
            tmp.rename(d)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return j


def _leb(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if not x & 0x80:
            return r, i


def unsupported_features(wasm: bytes) -> list[str]:
    """Independent check of the features of a *valid* module that wasm3 0.5.0 cannot run."""
    found = []
    i = 8
    while i < len(wasm):
        sid = wasm[i]
        size, j = _leb(wasm, i + 1)
        end = j + size
        if sid == 2:
            n, j = _leb(wasm, j)
            for _ in range(n):
                for _ in range(2):
                    ln, j = _leb(wasm, j)
                    j += ln
                kind = wasm[j]
                j += 1
                if kind == 0:
                    _, j = _leb(wasm, j)
                    continue
                found.append({1: "table import", 2: "memory import", 3: "global import"}.get(kind, "import"))
                if kind == 1:
                    j += 1
                    flags = wasm[j]
                    j += 1
                    _, j = _leb(wasm, j)
                    if flags & 1:
                        _, j = _leb(wasm, j)
                elif kind == 2:
                    flags = wasm[j]
                    j += 1
                    _, j = _leb(wasm, j)
                    if flags & 1:
                        _, j = _leb(wasm, j)
                elif kind == 3:
                    j += 2
        elif sid in (4, 5):
            n, _ = _leb(wasm, j)
            if n > 1:
                found.append("multiple tables" if sid == 4 else "multiple memories")
        i = end
    return found


@dataclass
class FileResult:
    name: str
    neg_total: int = 0  # binary assert_invalid + assert_malformed
    neg_rejected: int = 0
    text_skipped: int = 0  # text-format assert_malformed
    pos_total: int = 0  # valid modules
    pos_accepted: int = 0
    unsup_total: int = 0  # valid modules using unsupported features
    unsup_rejected: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def run_cli(cli: Path, files: list[Path]) -> list[str]:
    out: list[str] = []
    for k in range(0, len(files), 200):
        chunk = files[k : k + 200]
        p = subprocess.run([str(cli), *map(str, chunk)], capture_output=True, text=True, errors="replace")
        if p.returncode not in (0, 1):
            raise RuntimeError(f"validate_cli crashed (rc {p.returncode}) on {chunk}: {p.stderr[-2000:]}")
        lines = p.stdout.splitlines()
        if len(lines) != len(chunk):
            raise RuntimeError(f"validate_cli printed {len(lines)} lines for {len(chunk)} files: {p.stderr[-2000:]}")
        out += lines
    return out


def run_file(cli: Path, wast: Path) -> FileResult:
    j = convert(wast)
    data = json.loads(j.read_text())
    res = FileResult(wast.name)
    todo = []  # (kind, path, line, text)
    for cmd in data["commands"]:
        t = cmd["type"]
        if t in ("assert_invalid", "assert_malformed"):
            if cmd.get("module_type") == "text":
                res.text_skipped += 1
                continue
            todo.append(("neg", j.parent / cmd["filename"], cmd["line"], cmd.get("text", "")))
        elif t in ("module", "assert_unlinkable", "assert_uninstantiable"):
            if cmd.get("module_type", "binary") == "text":
                res.text_skipped += 1
                continue
            todo.append(("pos", j.parent / cmd["filename"], cmd["line"], t))
    lines = run_cli(cli, [p for _, p, _, _ in todo])
    for (kind, path, line, text), out in zip(todo, lines):
        accepted = out.startswith("OK")
        if kind == "neg":
            res.neg_total += 1
            if not accepted:
                res.neg_rejected += 1
            elif (wast.name, path.name) in KNOWN_ACCEPTED:
                res.failures.append(
                    f'line {line} ({path.name}): accepted, expected "{text}" — deliberate: '
                    f"{KNOWN_ACCEPTED[(wast.name, path.name)]}"
                )
            else:
                res.failures.append(f'line {line} ({path.name}): accepted, expected rejection "{text}"')
        else:
            unsup = unsupported_features(path.read_bytes())
            if unsup:
                res.unsup_total += 1
                if not accepted and "unsupported: " in out:
                    res.unsup_rejected += 1
                else:
                    res.failures.append(
                        f"line {line} ({path.name}): uses {', '.join(sorted(set(unsup)))}; "
                        f"expected 'unsupported', got {out}"
                    )
            else:
                res.pos_total += 1
                if accepted:
                    res.pos_accepted += 1
                else:
                    res.failures.append(f"line {line} ({path.name}, {text}): valid module rejected: {out}")
    return res


def all_wasts() -> list[Path]:
    return sorted(SPEC_DIR.glob("*.wast"))


def main(argv: list[str]) -> int:
    markdown = "--markdown" in argv
    cli = build_cli(cache_dir() / "validate_cli")
    tot = FileResult("total")
    rows = []
    for w in all_wasts():
        r = run_file(cli, w)
        rows.append(r)
        for f in (
            "neg_total",
            "neg_rejected",
            "text_skipped",
            "pos_total",
            "pos_accepted",
            "unsup_total",
            "unsup_rejected",
        ):
            setattr(tot, f, getattr(tot, f) + getattr(r, f))
        tot.failures += [f"{r.name}: {x}" for x in r.failures]
    if markdown:
        print(
            "| file | invalid+malformed rejected | text-only skipped | valid modules accepted | "
            "unsupported-feature modules rejected | status |"
        )
        print("|---|---|---|---|---|---|")
    for r in rows + [tot]:
        if markdown:
            st = "pass" if r.ok else f"{len(r.failures)} failing"
            print(
                f"| {r.name} | {r.neg_rejected}/{r.neg_total} | {r.text_skipped} | {r.pos_accepted}/{r.pos_total} | "
                f"{r.unsup_rejected}/{r.unsup_total} | {st} |"
            )
        else:
            print(
                f"{r.name:28} rejected {r.neg_rejected}/{r.neg_total}  text-skipped {r.text_skipped}  "
                f"accepted {r.pos_accepted}/{r.pos_total}  unsupported {r.unsup_rejected}/{r.unsup_total}"
            )
    for f in tot.failures:
        print("FAIL", f)
    return 0 if tot.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
