"""Real toolchain output must validate: C compiled with zig cc for wasm32-wasi, with the DEFAULT cpu (which emits
sign-extension, non-trapping float-to-int, bulk memory.copy/fill, mutable globals, multi-value-capable encodings)
and with -mcpu=mvp. Also measures validation time on a generated program of about 150-200 KB.

Run: python -m pytest tests/validator/test_zig_modules.py -q -s
"""

from __future__ import annotations

import importlib.util
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import spec_runner  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None or shutil.which("gcc") is None,
    reason="needs the ziglang pip package and gcc",
)

SMALL_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>

typedef int (*op_fn)(int, int);
static int add(int a, int b) { return a + b; }
static int mul(int a, int b) { return a * b; }
static op_fn ops[] = { add, mul };

struct pair { int64_t a; double b; };
__attribute__((noinline)) static struct pair mk(int64_t a, double b) { struct pair p = { a, b }; return p; }

int main(int argc, char **argv) {
    char buf[256];
    memset(buf, argc, sizeof buf);
    memcpy(buf + 1, buf, 100);
    double d = argc > 1 ? strtod(argv[1], NULL) : 3.75;
    int i = (int)d;                          /* float-to-int: trunc_sat with the default cpu */
    int8_t s8 = (int8_t)(argc * 200);        /* sign extension */
    struct pair p = mk((int64_t)d * 3, sqrt(d));
    unsigned long long big = (unsigned long long)(d * 1e12);
    printf("%d %d %d %lld %f %llu %s\n", ops[argc & 1](i, 3), s8, buf[50], (long long)p.a, p.b, big, buf + 200);
    return 0;
}
"""


def zig_cc(src: Path, out: Path, *flags: str) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ziglang",
            "cc",
            "-target",
            "wasm32-wasi",
            "-O2",
            "-s",
            *flags,
            str(src),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def generated_program(n: int = 400) -> str:
    rnd = random.Random(1)
    out = ["#include <stdio.h>\n#include <stdint.h>\n#include <string.h>\n#include <stdlib.h>\n"]
    out += [f"uint32_t f{i}(uint32_t, uint64_t, double);\n" for i in range(n)]
    for i in range(n):
        out.append(f"""
__attribute__((noinline)) uint32_t f{i}(uint32_t a, uint64_t b, double c) {{
    uint32_t acc = a ^ {rnd.randint(0, 2**31)}u;
    for (int k = 0; k < (int)(a & 15); k++) {{
        switch ((acc + k) % 5) {{
        case 0: acc = acc * 2654435761u + (uint32_t)b; break;
        case 1: acc ^= (uint32_t)(c * {rnd.random():.5f}); break;
        case 2: acc += (uint32_t)(b >> (k & 31)); b = b * 6364136223846793005ull + 1; break;
        case 3: c = c * 1.0001 + acc; break;
        default: acc = (acc << 7) | (acc >> 25); break;
        }}
    }}
    char buf[32]; memset(buf, (int)acc, sizeof buf);
    if (acc % 7 == 3) acc += f{(i + 1) % n}(acc >> 3, b + 1, c / 2);
    return acc + (uint32_t)buf[acc % 32] + (uint32_t)c;
}}""")
    out.append(
        "typedef uint32_t (*fp)(uint32_t, uint64_t, double);\nstatic fp table[] = {"
        + ",".join(f"f{i}" for i in range(n))
        + "};\n"
    )
    out.append(
        "int main(int argc, char **argv) { uint32_t s = 0;\n"
        f"  for (int i = 0; i < argc * 1000; i++) s += table[i % {n}](i, s, i * 0.5);\n"
        '  printf("%u\\n", s); return 0; }\n'
    )
    return "".join(out)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    return spec_runner.build_cli(tmp_path_factory.mktemp("zigval") / "validate_cli")


@pytest.mark.parametrize("flags", [(), ("-mcpu=mvp",)], ids=["default-cpu", "mvp"])
def test_zig_output_validates(cli, tmp_path, flags):
    src = tmp_path / "prog.c"
    src.write_text(SMALL_C)
    wasm = zig_cc(src, tmp_path / "prog.wasm", *flags)
    p = subprocess.run([str(cli), "--imports", str(wasm)], capture_output=True, text=True)
    print("\n" + p.stdout.strip())
    assert p.returncode == 0 and p.stdout.splitlines()[-1].startswith("OK"), p.stdout
    # every import is a WASI function with a wasm3 signature
    for line in p.stdout.splitlines()[:-1]:
        assert re.fullmatch(r"import wasi_snapshot_preview1\.\w+ [viIfF]+\([iIfF]*\)", line), line
    if not flags:
        dis = (
            subprocess.run(["wasm-objdump", "-d", str(wasm)], capture_output=True, text=True).stdout
            if shutil.which("wasm-objdump")
            else ""
        )
        if dis:  # the default cpu really uses the post-MVP operators we accept
            assert "memory.fill" in dis or "memory.copy" in dis
            assert "trunc_sat" in dis


def test_validation_time_of_a_150kb_module(cli, tmp_path):
    src = tmp_path / "big.c"
    src.write_text(generated_program())
    for flags, name in [((), "big.wasm"), (("-mcpu=mvp",), "big_mvp.wasm")]:
        wasm = zig_cc(src, tmp_path / name, *flags)
        p = subprocess.run([str(cli), "--bench", "100", str(wasm)], capture_output=True, text=True)
        print("\n" + p.stdout.strip())
        assert p.returncode == 0 and p.stdout.startswith("OK"), p.stdout
        us = float(re.search(r"([\d.]+) us per validation", p.stdout).group(1))
        size = wasm.stat().st_size
        assert 100_000 < size < 400_000
        # ~0.5 ms for 180 KB on the 2-core dev machine; generous bound for a loaded CI box
        assert us < 5000, f"{us} us for {size} bytes"
