"""The build's promises: wasm3 pinned and patched at build time, never committed, carried by our sdist."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_wasm3", ROOT / "tools" / "fetch_wasm3.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_no_third_party_source_is_committed():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert files, "not a git checkout"
    assert not [f for f in files if Path(f).name.startswith("m3_") or f.startswith("third_party/")]


def test_vendored_tree_matches_the_pin_and_patches_apply(tmp_path):
    fetch = _fetch_module()
    dest = tmp_path / "wasm3-src"
    subprocess.run([sys.executable, str(ROOT / "tools" / "fetch_wasm3.py"), "--dest", str(dest)], check=True,
                   capture_output=True, timeout=300)
    assert fetch.tree_digest(ROOT / "third_party" / "wasm3") == fetch.TREE_SHA256
    patched = (dest / "wasm3" / "m3_exec.h").read_text()
    assert "phase_meter_slow" in patched and (dest / "wasm3" / "m3_phase_hooks.h").exists()
    assert len(list((ROOT / "csrc" / "wasm3-patches").glob("*.patch"))) >= 6


def test_tampered_vendored_tree_is_detected(tmp_path):
    fetch = _fetch_module()
    copy = tmp_path / "w"
    copy.mkdir()
    for f in (ROOT / "third_party" / "wasm3").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "m3_exec.c").write_bytes((copy / "m3_exec.c").read_bytes() + b"\n")
    assert fetch.tree_digest(copy) != fetch.TREE_SHA256


def test_sdist_carries_wasm3_sources(tmp_path):
    from scikit_build_core.build import build_sdist

    name = build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as tar:
        names = tar.getnames()
    root = name[: -len(".tar.gz")]
    assert f"{root}/third_party/wasm3/m3_exec.h" in names
    assert f"{root}/third_party/wasm3/LICENSE" in names
    assert f"{root}/csrc/phase_job.c" in names
    assert not any("/build/" in n for n in names)
