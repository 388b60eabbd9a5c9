"""The boot build scripts say what they use: which pyphase stage 2 packs, which release key stage 1 bakes in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyphase

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "initramfs" / "build-stage2.sh"


def test_stage2_names_the_pyphase_it_packs():
    out = subprocess.run(
        [str(SCRIPT), "--dry-run", "--python", sys.executable], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    where = os.path.dirname(os.path.realpath(pyphase.__file__))
    assert f"stage 2: packing pyphase {pyphase.__version__} from {where}" in out.stderr, out.stderr
    assert ("not this checkout's" in out.stderr) == (where != str(ROOT / "pyphase")), out.stderr


def test_stage2_refuses_a_python_without_pyphase(tmp_path):
    out = subprocess.run(
        [str(SCRIPT), "--dry-run", "--python", "/usr/bin/python3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={**os.environ, "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"},
    )
    if out.returncode == 0:  # a system Python with pyphase installed: it must say which one
        assert "stage 2: packing pyphase" in out.stderr
        return
    assert "cannot import pyphase" in out.stderr and "pip install -e" in out.stderr, out.stderr


def test_make_finds_a_relative_release_pub_from_where_it_was_started(tmp_path):
    pub = tmp_path / "release.key.pub"
    pub.write_text("x\n")
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT / "initramfs"), "stage1", "RELEASE_PUB=release.key.pub"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PWD": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert f'--pub "{pub}"' in out.stdout, out.stdout
    missing = subprocess.run(
        ["make", "-C", str(ROOT / "initramfs"), "stage1", "RELEASE_PUB=nowhere.pub"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PWD": str(tmp_path)},
    )
    assert missing.returncode != 0 and "nowhere.pub not found" in missing.stdout + missing.stderr


def test_boot_keygen_suggests_an_absolute_path_and_the_secret_is_git_ignored(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pyphase.boot", "keygen", "--out", "release.key"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert f"RELEASE_PUB={tmp_path / 'release.key.pub'}" in out.stdout, out.stdout
    for secret in ("release.key", "some/dir/identity.key"):
        assert subprocess.run(["git", "check-ignore", "-q", secret], cwd=ROOT).returncode == 0, secret
