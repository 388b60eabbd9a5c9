"""The WASI file system: preopened directories, and every way out of one refused, on wasm3 and wasmtime, each
in-process and in the sandbox.

The probe is tests/programs/fs_probe.c; the tree it gets is ``root/`` (inside.txt, sub/, link_out -> the
directory above) next to ``secret.txt``, which nothing may read, change or remove.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import pyphase
from pyphase import Preopen, _core, _sandbox
from pyphase.sandbox import Sandbox

import wasm_build

Runner = Callable[..., pyphase.Result]


@pytest.fixture(scope="module")
def fs_probe() -> bytes:
    return wasm_build.build_c("fs_probe.c").read_bytes()


HAVE_LANDLOCK = _sandbox.landlock_abi() > 0


@pytest.mark.skipif(HAVE_LANDLOCK, reason="this kernel has Landlock: the other tests run in the sandbox")
def test_without_landlock(_core_sandbox: Sandbox, fs_probe: bytes, tree: Path) -> None:
    """Without Landlock nothing would bound what a worker that escaped wasm3 could open: a job with directories
    is refused, with a message saying why, and jobs without go on."""
    r = _core_sandbox.run(fs_probe, dirs=[Preopen(str(tree), "/")])
    assert r.status == "crashed" and "no Landlock" in r.message
    assert _core_sandbox.run(fs_probe, args=["race", "0"]).status == "ok"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text("SECRET\n")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "inside.txt").write_text("inside\n")
    (root / "link_out").symlink_to(tmp_path)
    return root


def outside_state(tree: Path) -> tuple[list[str], str, int]:
    top = tree.parent
    return sorted(os.listdir(top)), (top / "secret.txt").read_text(), (top / "secret.txt").stat().st_mtime_ns


def attempts(result: pyphase.Result) -> dict[str, int]:
    assert result.status == "ok", result.message
    out = {}
    for line in result.stdout.decode().splitlines():
        assert not line.startswith("LEAKED"), line
        name, errno = line.rsplit(" ", 1)
        out[name] = int(errno)
    return out


# Attempts that are meant to work: none of them reaches outside (checked separately).
ALLOWED = {
    "inside",
    "make_rel_link",
    "hardlink_via_symlink",
    "readlink_host_symlink",
    "open_for_renumber",
    "renumber_over_preopen",
}
ENOTCAPABLE, EBADF, EMFILE, EPERM, EROFS = 76, 8, 33, 63, 69


def test_no_way_out(runner: Runner, fs_probe: bytes, tree: Path) -> None:
    before = outside_state(tree)
    got = attempts(runner(fs_probe, dirs=[Preopen(str(tree), "/")]))
    assert len(got) == 31
    for name, errno in got.items():
        if name in ALLOWED:
            assert errno == 0, name
        else:
            assert errno != 0, f"{name} succeeded"
    for name in (
        "dotdot",
        "sub_dotdot",
        "absolute",
        "etc_passwd",
        "host_symlink",
        "own_symlink",
        "hardlink_out",
        "rename_out",
        "rename_in",
        "mkdir_out",
        "unlink_out",
        "stat_dotdot",
        "utimes_dotdot",
        "create_out",
    ):
        assert got[name] == ENOTCAPABLE, name
    assert got["make_abs_link"] == EPERM
    assert got["prestat_after_renumber"] == EBADF  # the preopen is gone, a plain file took its number
    assert outside_state(tree) == before
    assert (tree / "inside.txt").read_text() == "inside\n"


def test_symlink_swapped_while_the_job_runs(runner: Runner, fs_probe: bytes, tree: Path) -> None:
    """Another process flips ``swap`` between a file inside and the secret outside as fast as it can; the job
    opens it thousands of times and never reads the secret."""
    swap = tree / "swap"
    swap.symlink_to("inside.txt")
    stop = threading.Event()
    targets = [str(tree.parent / "secret.txt"), "../secret.txt", "inside.txt"]
    flips = 0

    def flip() -> None:
        nonlocal flips
        tmp = tree / "swap.tmp"
        while not stop.is_set():
            for target in targets:
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(target)
                os.replace(tmp, swap)
                flips += 1

    thread = threading.Thread(target=flip)
    thread.start()
    try:
        while flips < 30:
            time.sleep(0.001)
        flips_before = flips
        result = runner(fs_probe, args=["race", "20000"], dirs=[Preopen(str(tree), "/")])
        flips_during = flips - flips_before
    finally:
        stop.set()
        thread.join()
    assert result.status == "ok", result.message
    counts = {k: int(v) for k, v in zip(*[iter(result.stdout.decode().split())] * 2)}
    assert counts["secret"] == 0
    assert counts["inside"] + counts["failed"] == 20000
    assert flips_during > 0


def test_descriptor_exhaustion_is_an_errno(runner: Runner, fs_probe: bytes, tree: Path) -> None:
    result = runner(fs_probe, args=["exhaust"], dirs=[Preopen(str(tree), "/")])
    assert result.status == "ok", result.message
    assert result.stdout.decode().splitlines() == [f"opened {_core.MAX_FDS - 1} errno {EMFILE}", "reopen 0"]
    # and the next job runs as usual
    assert attempts(runner(fs_probe, dirs=[Preopen(str(tree), "/")]))["inside"] == 0


def test_read_only_directory(runner: Runner, fs_probe: bytes, tree: Path) -> None:
    got = attempts(runner(fs_probe, args=["write", "new.txt"], dirs=[Preopen(str(tree), "/", readonly=True)]))
    assert got == {"create": EROFS, "truncate_existing": EROFS, "mkdir": EROFS, "unlink": EROFS}
    assert sorted(os.listdir(tree)) == ["inside.txt", "link_out", "sub"]
    assert (tree / "inside.txt").read_text() == "inside\n"


def test_read_write_directory(runner: Runner, fs_probe: bytes, tree: Path) -> None:
    got = attempts(runner(fs_probe, args=["write", "sub/new.txt"], dirs=[Preopen(str(tree), "/")]))
    assert got == {"create": 0, "write": 0, "truncate_existing": 0, "mkdir": 0, "unlink": 0}
    assert (tree / "sub" / "new.txt").read_text() == "written\n"
    assert (tree / "newdir").is_dir() and not (tree / "inside.txt").exists()


def test_guest_names_and_libc(runner: Runner, fs_probe: bytes, tree: Path) -> None:
    dirs = [Preopen(str(tree / "sub"), "/scratch"), Preopen(str(tree), "/data", readonly=True)]
    result = runner(fs_probe, args=["fopen", "/data/inside.txt"], dirs=dirs)
    assert (result.status, result.exit_code, result.stdout) == ("ok", 0, b"inside\n")
    result = runner(fs_probe, args=["fopen", "/elsewhere/inside.txt"], dirs=dirs)
    assert result.exit_code == 1 and b"No such file" in result.stderr


def listing(runner: Runner, fs_probe: bytes, root: Path, deterministic: bool) -> list[str]:
    result = runner(fs_probe, args=["ls"], dirs=[Preopen(str(root), "/")], deterministic=deterministic)
    assert result.status == "ok", result.message
    return result.stdout.decode().splitlines()


def test_deterministic_mode_fixes_what_the_job_sees(runner: Runner, fs_probe: bytes, tmp_path: Path) -> None:
    """Two copies of one tree made at different times, in different orders, on different inodes: a deterministic
    job sees the same names, order, inode numbers, types, sizes and times in both."""
    a, b = tmp_path / "a", tmp_path / "b"
    names = ["zeta", "alpha", "mid", "dir"]
    for root, order in ((a, names), (b, list(reversed(names)))):
        root.mkdir()
        for name in order:
            if name == "dir":
                (root / name).mkdir()
            else:
                (root / name).write_text(name * 3)
        time.sleep(0.01)
    os.utime(b / "mid", (1, 1))
    det_a, det_b = listing(runner, fs_probe, a, True), listing(runner, fs_probe, b, True)
    assert det_a == det_b
    assert [line.split()[0] for line in det_a] == [".", "..", "alpha", "dir", "mid", "zeta"]
    assert all("mtim=1704067200000000000" in line for line in det_a if not line.startswith(".."))
    assert listing(runner, fs_probe, a, False) != listing(runner, fs_probe, b, False)  # real inodes and times


def test_dirs_are_checked(fs_probe: bytes, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        pyphase.run(fs_probe, dirs=[Preopen(str(tmp_path / "missing"))])
    with pytest.raises(ValueError, match="at most"):
        pyphase.run(fs_probe, dirs=[Preopen(str(tmp_path))] * (_core.MAX_PREOPENS + 1))
    with pytest.raises(ValueError, match="HOST::GUEST"):
        Preopen.parse("::guest")
    assert Preopen.parse("/a::/b", readonly=True) == Preopen("/a", "/b", True)
    assert Preopen.parse("/a").guest_path == "/a"


def test_no_directories_note(fs_probe: bytes, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A module that looks for a directory when none was given: ``phase run`` says once how to give one."""
    from pyphase.cli import main

    wasm = tmp_path / "probe.wasm"
    wasm.write_bytes(fs_probe)
    assert main(["run", str(wasm), "--arg", "fopen", "--arg", "/data/x", "--no-sandbox"]) == 1
    err = capfd.readouterr().err
    assert err.count("give one with --dir HOST[::GUEST]") == 1
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("x!")
    assert (
        main(["run", str(wasm), "--arg", "fopen", "--arg", "/data/x", "--ro-dir", f"{tmp_path / 'data'}::/data"]) == 0
    )
    captured = capfd.readouterr()
    assert captured.out == "x!" and "--dir" not in captured.err
