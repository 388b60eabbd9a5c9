"""Host directories a job sees (WASI preopens): :class:`Preopen` and the ``HOST[::GUEST]`` spelling of ``--dir``."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Sequence

from pyphase import _core

MAX_PREOPENS: int = _core.MAX_PREOPENS


class Preopen(NamedTuple):
    """``host`` directory shown to the job at ``guest`` (default: the same path); ``readonly`` gives the job no
    right to create, change or remove anything beneath it. Paths the job names never resolve outside it."""

    host: str
    guest: str = ""
    readonly: bool = False

    @property
    def guest_path(self) -> str:
        return self.guest or self.host

    @classmethod
    def parse(cls, spec: str, readonly: bool = False) -> Preopen:
        """``HOST[::GUEST]`` as wasmtime's ``--dir`` spells it."""
        host, sep, guest = spec.partition("::")
        if not host or (sep and not guest):
            raise ValueError(f"a directory is HOST or HOST::GUEST, got {spec!r}")
        return cls(host, guest, readonly)


class FsQuota(NamedTuple):
    """The bound on what a job keeps in its writable directories, enforced by the WASI layer as the job writes.

    ``max_bytes`` counts each regular file's size rounded up to :data:`QUOTA_BLOCK` (holes and ``fd_allocate``
    count as written) and one block per directory or symlink; ``max_files`` counts entries of any kind. ``used_*``
    is what the directories hold when the job starts (:func:`usage`). A call that would pass a bound fails with
    ``EDQUOT`` and a job that would have ended ``ok`` ends ``output_limit``, its ``Result.fs_limit`` naming the
    bound."""

    max_bytes: int
    max_files: int
    used_bytes: int = 0
    used_files: int = 0


QUOTA_BLOCK: int = _core.FS_QUOTA_BLOCK


def usage(file_sizes: Sequence[int], others: int) -> tuple[int, int]:
    """(bytes, entries) as :class:`FsQuota` counts them, of regular files of ``file_sizes`` and ``others``
    directories and symlinks."""
    blocks = sum(-(-size // QUOTA_BLOCK) for size in file_sizes)
    return (blocks + others) * QUOTA_BLOCK, len(file_sizes) + others


def check(dirs: Sequence[Preopen]) -> list[Preopen]:
    """The preopens, checked: a list of :class:`Preopen` of existing directories, guest names without NUL."""
    out = [d if isinstance(d, Preopen) else Preopen(*d) for d in dirs]
    if len(out) > MAX_PREOPENS:
        raise ValueError(f"at most {MAX_PREOPENS} preopened directories, got {len(out)}")
    for d in out:
        if "\0" in d.host or "\0" in d.guest_path:
            raise ValueError(f"directory names must not contain NUL: {d!r}")
        if not os.path.isdir(d.host):
            raise ValueError(f"not a directory: {d.host}")
    return out


@contextmanager
def opened(dirs: Sequence[Preopen]) -> Iterator[list[tuple[int, bytes, bool]]]:
    """Open each host directory (O_DIRECTORY, close-on-exec) for the length of a job: (fd, guest name, readonly)."""
    fds: list[int] = []
    try:
        out = []
        for d in check(dirs):
            fd = os.open(d.host, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(fd)
            out.append((fd, os.fsencode(d.guest_path), bool(d.readonly)))
        yield out
    finally:
        for fd in fds:
            os.close(fd)
