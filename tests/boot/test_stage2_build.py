"""build-stage2.sh says which pyphase it packs: the one its --python imports, which need not be this checkout's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyphase

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "initramfs" / "build-stage2.sh"


def test_stage2_names_the_pyphase_it_packs():
    out = subprocess.run([str(SCRIPT), "--dry-run", "--python", sys.executable], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    where = os.path.dirname(os.path.realpath(pyphase.__file__))
    assert f"stage 2: packing pyphase {pyphase.__version__} from {where}" in out.stderr, out.stderr
    assert ("not this checkout's" in out.stderr) == (where != str(ROOT / "pyphase")), out.stderr


def test_stage2_refuses_a_python_without_pyphase(tmp_path):
    out = subprocess.run([str(SCRIPT), "--dry-run", "--python", "/usr/bin/python3"], capture_output=True, text=True,
                         timeout=120, cwd="/", env={**os.environ, "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"})
    if out.returncode == 0:                 # a system Python with pyphase installed: it must say which one
        assert "stage 2: packing pyphase" in out.stderr
        return
    assert "cannot import pyphase" in out.stderr and "pip install -e" in out.stderr, out.stderr
