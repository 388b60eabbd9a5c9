"""Differential test against wabt's wasm-validate: mutants of spec-suite modules (mutations biased to the code
section) must never be accepted by our validator when wabt rejects them. The reverse is allowed only for the
known, deliberate differences: features wasm3 cannot run ("unsupported: "), our caps ("limit"), and function
bodies whose control stack is not closed by their final byte (wabt only checks that the last byte is an end;
the spec requires the function's own end there: "missing end").

Run: python -m pytest tests/validator/test_differential_wabt.py -q -s
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import spec_runner  # noqa: E402
from wasm_builder import sections  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("wasm-validate") is None
    or shutil.which("wast2json") is None
    or shutil.which("gcc") is None
    or not spec_runner.SPEC_DIR.is_dir(),
    reason="needs wabt, gcc and the spec testsuite",
)

ALLOWED = ("unsupported: ", "limit", "missing end")


def test_never_accept_what_wabt_rejects(tmp_path):
    cli = spec_runner.build_cli(tmp_path / "validate_cli")
    seeds = []
    for w in (
        "block.wast",
        "br_table.wast",
        "loop.wast",
        "if.wast",
        "call_indirect.wast",
        "func.wast",
        "memory.wast",
        "global.wast",
        "exports.wast",
        "binary.wast",
        "select.wast",
        "local_tee.wast",
    ):
        j = spec_runner.convert(spec_runner.SPEC_DIR / w)
        seeds += [p.read_bytes() for p in j.parent.glob("*.wasm")]
    code = []
    for s in seeds:
        try:
            secs = [x for x in sections(s) if x[0] == 10 and x[3] - x[2] >= 4]
        except IndexError:
            continue
        if secs and len(s) < 20000:
            code.append((s, secs[0]))
    rng = random.Random(2024)
    files = []
    for k in range(1500):
        s, (_, _, a, e) = rng.choice(code)
        b = bytearray(s)
        for _ in range(rng.choice([1, 1, 2])):
            i = rng.randrange(a + 2, e) if rng.random() < 0.85 else rng.randrange(8, len(b))
            if rng.random() < 0.6:
                b[i] = rng.choice(
                    [
                        rng.randrange(256),
                        0x0B,
                        0x1A,
                        0x00,
                        0x41,
                        0x20,
                        0x0C,
                        0x0D,
                        0x0E,
                        0x02,
                        0x03,
                        0x04,
                        0x05,
                        0x6A,
                        0x7C,
                        0x45,
                        0x1B,
                        0x0F,
                    ]
                )
            else:
                b[i] ^= 1 << rng.randrange(8)
        f = tmp_path / f"m{k}.wasm"
        f.write_bytes(bytes(b))
        files.append(f)
    ours = spec_runner.run_cli(cli, files)
    agree = disagree_allowed = 0
    bad = []
    for f, o in zip(files, ours):
        wabt_ok = subprocess.run(["wasm-validate", str(f)], capture_output=True).returncode == 0
        our_ok = o.startswith("OK")
        if wabt_ok == our_ok:
            agree += 1
        elif our_ok:
            bad.append(f"{f.name}: accepted by us, rejected by wabt")
        elif any(a in o for a in ALLOWED):
            disagree_allowed += 1
        else:
            bad.append(f"{f.name}: rejected by us ({o}), accepted by wabt")
    print(f"\n{len(files)} mutants: {agree} same verdict, {disagree_allowed} known differences")
    assert not bad, "\n".join(bad[:20])
