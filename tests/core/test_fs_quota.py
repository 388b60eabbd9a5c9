"""The scratch quota (``FsQuota``): a job that writes past ``disk_bytes`` or makes more than ``files`` entries in its
writable directories gets EDQUOT at that call, ends ``output_limit`` naming the bound, and the directory on the host
never holds more than the bound. On wasm3 and wasmtime, each in this process and in a sandbox worker.

The probe is tests/programs/quota_probe.c; each command prints its name, ``ok`` or the errno's name, then numbers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Iterator

import pytest

import pyphase
from pyphase import FsQuota, Preopen, _sandbox, engines
from pyphase.preopen import QUOTA_BLOCK
from pyphase.sandbox import Sandbox

import wasm_build

KIB = 1024
BYTES, FILES = 64 * KIB, 8
Runner = Callable[..., pyphase.Result]


@pytest.fixture(scope="module")
def probe() -> bytes:
    return wasm_build.build_c("quota_probe.c").read_bytes()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(workers=1) as sb:
        yield sb


def run(runner: Runner, probe: bytes, scratch: Path, *commands: str, quota: FsQuota | None = None) -> list[str]:
    """Run the probe's commands in ``scratch`` (at /s; ``@`` stands for /s/) with ``quota`` (default: the bounds
    above, counting what ``scratch`` holds already); the lines it printed. Checks the bound on the host after."""
    quota = quota or FsQuota(BYTES, FILES, *held(scratch))
    args = [c.replace("@", "/s/") for c in commands]
    result = runner(probe, args=args, dirs=[Preopen(str(scratch), "/s")], quota=quota)
    run.last = result  # type: ignore[attr-defined]
    assert result.status in ("ok", "output_limit"), result.message
    used_bytes, used_files = held(scratch)
    assert used_bytes <= quota.max_bytes and used_files <= quota.max_files, (used_bytes, used_files)
    return result.stdout.decode().splitlines()


def held(scratch: Path) -> tuple[int, int]:
    """What the directory holds on the host, as the quota counts it and at least the blocks the disk gives it."""
    nbytes = entries = 0
    for top, dirs, names in os.walk(scratch):
        for name in dirs + names:
            st = os.lstat(os.path.join(top, name))
            entries += 1
            if stat.S_ISREG(st.st_mode):
                nbytes += max(-(-st.st_size // QUOTA_BLOCK) * QUOTA_BLOCK, st.st_blocks * 512)
            else:
                nbytes += QUOTA_BLOCK
    return nbytes, entries


def last() -> pyphase.Result:
    return run.last  # type: ignore[attr-defined,no-any-return]


def test_writing_past_disk_bytes_is_refused_at_that_write(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    out = run(runner, probe, tmp_path, "fill", "@big", "100000", "fill", "@more", "10")
    assert out == ["fill EDQUOT 65536", "fill EDQUOT 0"]
    assert (tmp_path / "big").stat().st_size == BYTES
    r = last()
    assert r.status == "output_limit" and r.fs_limit == "disk_bytes"
    assert "disk_bytes of 65536 bytes" in r.message and "EDQUOT" in r.message


def test_removing_gives_the_space_back(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    out = run(runner, probe, tmp_path, "fill", "@a", "65536", "rm", "@a", "fill", "@b", "65536", "append", "@b", "1")
    assert out == ["fill ok 65536", "rm ok", "fill ok 65536", "append EDQUOT 0"]
    out = run(runner, probe, tmp_path, "fill", "@b", "0", "fill", "@c", "65536")  # truncation frees too
    assert out == ["fill ok 0", "fill ok 65536"]
    assert last().status == "ok" and last().fs_limit == ""


def test_holes_allocate_and_truncate_count_as_written(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    out = run(
        runner, probe, tmp_path,
        "pwrite", "@h", "1000000", "pwrite", "@h", "60000",
        "allocate", "@h", "0", "1000000", "truncate", "@h", "1000000", "truncate", "@h", "0",
        "allocate", "@a", "0", "65536", "truncate", "@h", "1",
    )  # fmt: skip
    assert out == [
        "pwrite EDQUOT", "pwrite ok", "allocate EDQUOT", "truncate EDQUOT", "truncate ok", "allocate ok",
        "truncate EDQUOT",
    ]  # fmt: skip
    assert (tmp_path / "h").stat().st_size == 0 and (tmp_path / "a").stat().st_size == BYTES


def test_more_entries_than_files_is_refused(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    out = run(runner, probe, tmp_path, "files", "@f", "100", "mkdir", "@d", "symlink", "f0", "@l", "link", "@f0", "@g")
    assert out == ["files EDQUOT 8", "mkdir EDQUOT", "symlink EDQUOT", "link EDQUOT"]
    assert len(os.listdir(tmp_path)) == FILES
    r = last()
    assert r.status == "output_limit" and r.fs_limit == "files" and "files of 8 entries" in r.message
    out = run(runner, probe, tmp_path, "rm", "@f0", "rm", "@f1", "mkdir", "@d", "symlink", "f2", "@d/l", "mkdir", "@e")
    assert out == ["rm ok", "rm ok", "mkdir ok", "symlink ok", "mkdir EDQUOT"]
    # at the bound, what fails for another reason says that reason and is no refusal at the bound
    out = run(runner, probe, tmp_path, "touch", "@nodir/x", "mkdir", "@d", "symlink", "x", "@f2", "touch", "@f3")
    assert out == ["touch ENOENT", "mkdir EEXIST", "symlink EEXIST", "touch ok"]
    assert last().status == "ok" and last().fs_limit == ""


def test_hard_links_open_files_and_renames(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    """Space goes back only when an inode's last name goes and the job holds it open no more."""
    half = str(BYTES // 2)
    out = run(
        runner, probe, tmp_path,
        "fill", "@a", half, "link", "@a", "@b", "rm", "@a", "fill", "@c", "40000",  # b still holds a's blocks
        "rm", "@b", "rm", "@c", "fill", "@d", half, "hold", "@d", "rm", "@d", "fill", "@e", "40000",  # held open
        "close", "rm", "@e", "fill", "@f", half, "fill", "@g", half, "mv", "@f", "@g", "fill", "@h", half,
    )  # fmt: skip
    assert out == [
        "fill ok 32768", "link ok", "rm ok", "fill EDQUOT 32768",
        "rm ok", "rm ok", "fill ok 32768", "hold ok", "rm ok", "fill EDQUOT 32768",
        "close ok", "rm ok", "fill ok 32768", "fill ok 32768", "mv ok", "fill ok 32768",
    ]  # fmt: skip


def test_what_the_directory_holds_at_the_start_counts(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    quota = FsQuota(BYTES, FILES, used_bytes=BYTES - QUOTA_BLOCK, used_files=FILES - 1)
    out = run(runner, probe, tmp_path, "fill", "@a", "10000", "touch", "@b", quota=quota)
    assert out == ["fill EDQUOT 4096", "touch EDQUOT"]


def test_without_a_quota_nothing_is_counted(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    r = runner(probe, args=["fill", "/s/a", "1000000", "files", "/s/f", "20"], dirs=[Preopen(str(tmp_path), "/s")])
    assert r.status == "ok" and r.stdout.decode().splitlines() == ["fill ok 1000000", "files ok 20"]


def test_read_only_directories_do_not_count(runner: Runner, probe: bytes, tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "data").write_bytes(b"x" * 200_000)
    (tmp_path / "rw").mkdir()
    dirs = [Preopen(str(tmp_path / "ro"), "/ro", readonly=True), Preopen(str(tmp_path / "rw"), "/s")]
    r = runner(probe, args=["fill", "/s/a", "65536"], dirs=dirs, quota=FsQuota(BYTES, FILES))
    assert r.status == "ok" and r.stdout.decode() == "fill ok 65536\n"


@pytest.mark.skipif(_sandbox.landlock_abi() <= 0, reason="this kernel has no Landlock (sandboxed directories refused)")
@pytest.mark.parametrize("engine", ["wasm3", "wasmtime"])
def test_a_worker_that_escaped_its_engine_is_stopped_at_disk_bytes(
    sandbox: Sandbox, probe: bytes, tmp_path: Path, engine: str
) -> None:
    """The backstop below the WASI layer: a worker writing by itself (test action) is killed by RLIMIT_FSIZE at
    disk_bytes, and the file holds no more (a wasmtime worker's larger address space changes nothing)."""
    if engine not in engines.available():
        pytest.skip("the compiling engine is not installed (pyphase[jit])")
    quota = FsQuota(BYTES, FILES)
    r = sandbox._selftest("write_past", probe, dirs=[Preopen(str(tmp_path), "/s")], quota=quota, engine=engine)
    assert r.status == "crashed" and "SIGXFSZ" in r.message, r.message
    assert (tmp_path / "past.bin").stat().st_size == BYTES
