"""The build's promises: wasm3 and libsodium pinned and fetched at build time, never committed, carried by our
sdist, which installs offline into a fresh venv with nothing but a C compiler and links no shared libsodium."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_no_third_party_source_is_committed():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert files, "not a git checkout"
    assert not [f for f in files if Path(f).name.startswith("m3_") or f.startswith("third_party/")]


def test_vendored_tree_matches_the_pin_and_patches_apply(tmp_path):
    fetch = _load("fetch_wasm3")
    dest = tmp_path / "wasm3-src"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fetch_wasm3.py"), "--dest", str(dest)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert fetch.tree_digest(ROOT / "third_party" / "wasm3") == fetch.TREE_SHA256
    patched = (dest / "wasm3" / "m3_exec.h").read_text()
    assert "phase_meter_slow" in patched and (dest / "wasm3" / "m3_phase_hooks.h").exists()
    assert len(list((ROOT / "csrc" / "wasm3-patches").glob("*.patch"))) >= 6


def test_tampered_vendored_tree_is_detected(tmp_path):
    fetch = _load("fetch_wasm3")
    copy = tmp_path / "w"
    copy.mkdir()
    for f in (ROOT / "third_party" / "wasm3").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "m3_exec.c").write_bytes((copy / "m3_exec.c").read_bytes() + b"\n")
    assert fetch.tree_digest(copy) != fetch.TREE_SHA256


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scikit_build_core.build import build_sdist

    out = tmp_path_factory.mktemp("sdist")
    return out / build_sdist(str(out))


def test_sdist_carries_wasm3_and_libsodium_sources(sdist):
    with tarfile.open(sdist) as tar:
        members = {m.name: m for m in tar.getmembers()}
    root = sdist.name[: -len(".tar.gz")]
    assert f"{root}/third_party/wasm3/m3_exec.h" in members
    assert f"{root}/third_party/wasm3/LICENSE" in members
    assert f"{root}/third_party/libsodium/LICENSE" in members
    assert f"{root}/third_party/libsodium/src/libsodium/include/sodium.h" in members
    assert f"{root}/cmake/libsodium.cmake" in members and f"{root}/tools/apply_patch.py" in members
    assert f"{root}/cmake/libsodium/CMakeLists.txt" in members  # libsodium for the boot tools and the fuzz build
    assert f"{root}/tools/pinned_sdist.py" in members
    assert f"{root}/csrc/phase_job.c" in members
    assert not any(n.startswith(f"{root}/build/") for n in members)


def test_libsodium_tree_matches_the_pin():
    fetch = _load("fetch_libsodium")
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "fetch_libsodium.py")], check=True, capture_output=True, timeout=300
    )
    assert _load("pinned_sdist").tree_digest(ROOT / "third_party" / "libsodium") == fetch.PIN.tree_sha256
    assert {"crypto_sign_verify_detached", "crypto_hash_sha256_init", "sodium_init"} <= fetch.functions_used()


def _elf_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"]


def test_sdist_installs_offline_in_a_fresh_venv_without_shared_libsodium(sdist, tmp_path):
    """Build requirements and dependencies come from the index first; the sdist itself then builds with no index
    at all (PIP_NO_INDEX reaches the fetch tools' pip too), so it must carry every third-party source."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needs = project["build-system"]["requires"] + project["project"]["dependencies"]
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *needs],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PHASE_"))}
    env["PIP_NO_INDEX"] = "1"
    built = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--no-build-isolation",
            "--no-deps",
            "--disable-pip-version-check",
            str(sdist),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    site = Path(
        subprocess.run(
            [str(py), "-c", "import pyphase, os; print(os.path.dirname(pyphase.__file__))"],
            check=True,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        ).stdout.strip()
    )
    binaries = _elf_files(site)
    assert {p.name.split(".")[0] for p in binaries} >= {"_core", "_sandbox", "phase-sandboxd"}
    for binary in binaries:
        linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        assert "sodium" not in linked, f"{binary.name} links a shared libsodium:\n{linked}"
        exported = subprocess.run(["nm", "-D", "--defined-only", str(binary)], capture_output=True, text=True).stdout
        assert "crypto_sign" not in exported, f"{binary.name} exports the bundled libsodium's symbols"
    demo = subprocess.run(
        [
            str(env_dir / "bin" / "phase"),
            "run",
            str(ROOT / "examples" / "hello" / "hello.wasm"),
            "--input",
            "Hello, World",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert demo.returncode == 0 and demo.stdout.strip() == "dlroW ,olleH", demo.stdout + demo.stderr


# libsodium's own tests (test/default in its tree) that cover what csrc/ uses and every CPU-dispatched
# implementation (AVX2/AVX-512/SSE/AES-NI on x86_64): each compares its output with the .exp file beside it.
SODIUM_SELF_TESTS = [
    "sign", "box", "box_easy", "box_seal", "secretbox", "generichash", "generichash2", "hash", "hash3", "auth",
    "onetimeauth", "scalarmult", "kx", "kdf", "randombytes", "stream", "chacha20", "xchacha20", "verify1",
    "aead_chacha20poly1305", "aead_xchacha20poly1305", "aead_aegis128l", "aead_aegis256", "aead_aes256gcm",
    "secretstream_xchacha20poly1305", "pwhash_argon2id", "shorthash", "sodium_core", "sodium_utils", "codecs",
]  # fmt: skip


def test_bundled_libsodium_passes_its_own_tests(tmp_path):
    """cmake/libsodium.cmake builds libsodium without its configure: its own tests say whether that build is right."""
    built = sorted(ROOT.glob("build/*/libsodium.a"), key=lambda p: p.stat().st_mtime)
    if not built:
        pytest.skip("no bundled libsodium in build/ (installed with PHASE_SODIUM=system?)")
    library = built[-1]
    tests = ROOT / "third_party" / "libsodium" / "test"
    failed = []
    for name in SODIUM_SELF_TESTS:
        exe = tmp_path / name
        subprocess.run(
            ["cc", "-O1", "-w", "-I", str(library.parent / "libsodium-include"), "-I", str(tests / "quirks")]
            + [str(tests / "default" / f"{name}.c"), str(library), "-lpthread", "-o", str(exe)],
            check=True,
            timeout=300,
        )
        (tmp_path / f"{name}.exp").write_bytes((tests / "default" / f"{name}.exp").read_bytes())
        if subprocess.run([str(exe)], cwd=tmp_path, capture_output=True, timeout=600).returncode != 0:
            failed.append(name)
    assert not failed, f"libsodium's own tests failed: {failed}"
