"""A remote job's directories on the node: its input trees fetched and laid out, and the tree of what it wrote.

``DATA_DIR/jobs/<random>/<i>/`` is the job's directory number ``i`` (``manifest.fs.dirs[i]``). A read-only tree is
made of hard links into the :class:`~pyphase.net.blobs.BlobStore` (no copy; the job cannot write through a
read-only preopen); a writable one gets its own copies, which the job may change. The node asks the client
only for the blobs it lacks (:meth:`JobFS.requests`, in chunks with a bounded window), and once the job ends
:meth:`JobFS.collect_outputs` lists the new and changed files of the writable directories, bounded by the
manifest's ``disk_bytes`` and ``files``. :meth:`JobFS.remove` deletes everything of the job.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pyphase import trees
from pyphase.errors import TreeError
from pyphase.net.blobs import BlobIO, BlobStore, Incoming, blob_hex
from pyphase.preopen import FsQuota, Preopen, usage

CHUNK = 1 << 20  # bytes asked for in one ``want``
WINDOW = 32  # chunks asked for and not yet written, per job (32 MiB: the round trips of a loaded machine)


@dataclass
class _Dir:
    guest: str
    readonly: bool
    ref: dict[str, Any]
    host: Path
    tree: trees.Tree | None = None


@dataclass(eq=False)
class JobFS:
    """The files of one job. ``module`` is held here while its blobs arrive."""

    root: Path
    store: BlobStore
    dirs: list[_Dir]
    disk_bytes: int
    max_files: int
    tree_files: int
    tree_bytes: int
    module: bytes | None = None
    #: where blob bytes are written, hashed and placed (the node's thread), and how a finished blob's outcome gets
    #: back to the node's loop (``loop.call_soon_threadsafe``); :meth:`receive` returns at once
    io: BlobIO = field(default_factory=lambda: BlobIO(threaded=False))
    notify: Callable[[Callable[[], None]], object] = lambda fn: fn()
    #: called on the loop after a blob settled (placed, or ``failure`` set: the job is to be dropped)
    on_change: Callable[[], None] = lambda: None
    failure: TreeError | OSError | None = None
    _settling: int = 0  # blobs whose last bytes were received and that are not placed yet
    _unstored: int = 0  # chunks received and not yet written by ``io``
    _removed: bool = False
    fetched_bytes: int = 0
    reused_bytes: int = 0
    _pending: dict[str, list[str]] = field(default_factory=dict)  # blob -> destination paths
    _listing_of: dict[str, list[int]] = field(default_factory=dict)  # listing blob -> dir indexes
    _queue: deque[tuple[str, int, int]] = field(default_factory=deque)
    _asked: dict[str, int] = field(default_factory=dict)  # blob -> chunks asked and not yet received
    _incoming: dict[str, Incoming] = field(default_factory=dict)  # blobs being received: at most WINDOW open
    _sizes: dict[str, int] = field(default_factory=dict)  # blobs asked for or to ask for, and their sizes
    _baseline: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # path -> (ino, size, ctime_ns)
    outputs: trees.Tree | None = None
    output_paths: dict[str, str] = field(default_factory=dict)  # blob -> host path

    @classmethod
    def create(
        cls, jobs_dir: Path, store: BlobStore, fs: dict[str, Any], tree_files: int, tree_bytes: int, **kwargs: Any
    ) -> JobFS:
        """The job's directories, laid out from the store as far as it holds their blobs; ``kwargs``: ``io``,
        ``notify``, ``on_change``."""
        root = Path(jobs_dir) / os.urandom(8).hex()
        root.mkdir(mode=0o700)
        dirs = []
        for i, d in enumerate(fs["dirs"]):
            host = root / str(i)
            host.mkdir(mode=0o755)
            dirs.append(_Dir(d["guest"], d["readonly"], d["tree"], host))
        job = cls(root, store, dirs, fs["disk_bytes"], fs["files"], tree_files, tree_bytes, **kwargs)
        try:
            for i, d in enumerate(dirs):
                data = store.read(d.ref["hash"])
                if data is not None and len(data) == d.ref["size"]:
                    job._lay_out(i, data)
                else:
                    job._want(d.ref["hash"], d.ref["size"], [], listing=i)
        except BaseException:
            job.remove()
            raise
        return job

    # ---- fetching ------------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return not self._pending and not self._listing_of and not self._settling

    @property
    def outstanding(self) -> int:
        """Chunks asked for and not yet written: the window (the node's budget of bytes in flight) covers both
        the network and ``io``'s queue, so a slow disk slows the asking."""
        return sum(self._asked.values()) + self._unstored

    def requests(self, allowed: int = WINDOW) -> list[tuple[str, int, int]]:
        """The next chunks to ask the client for, keeping at most ``WINDOW`` outstanding and asking at most
        ``allowed`` more (the node's budget for all jobs together): (blob, offset, size)."""
        out: list[tuple[str, int, int]] = []
        asked = self.outstanding
        while self._queue and asked < WINDOW and len(out) < allowed:
            asked += 1
            blob, offset, size = self._queue.popleft()
            if offset == 0:  # its part file is opened only now: a tree of many files holds few descriptors
                self._open(blob)
            self._asked[blob] = self._asked.get(blob, 0) + 1
            out.append((blob, offset, size))
        return out

    def receive(self, blob: str, offset: int, chunk: bytes | memoryview) -> None:
        """One chunk the client sent: counted here, written and hashed on ``io``. Raises :class:`TreeError`
        ``bad_blob`` (not asked for, or out of order); a blob whose completed bytes do not match (``blob_mismatch``),
        a listing refused (``bad_tree``/``tree_too_big``) or a write that failed set :attr:`failure` later, before
        :attr:`on_change` is called."""
        incoming = self._incoming.get(blob)
        if incoming is None or not self._asked.get(blob):
            raise TreeError("bad_blob", f"bytes of {blob[:20]}... at {offset} were not asked for")
        try:
            incoming.accept(offset, len(chunk))
        except ValueError as exc:
            raise TreeError("bad_blob", str(exc)) from None
        self._asked[blob] -= 1
        self.fetched_bytes += len(chunk)
        self._unstored += 1
        self.io.submit(incoming.store, chunk).add_done_callback(lambda _: self.notify(self._stored))
        if not incoming.complete:
            return
        del self._incoming[blob], self._asked[blob], self._sizes[blob]
        dests = self._pending.pop(blob, [])
        listings = self._listing_of.pop(blob, [])
        self._settling += 1
        future = self.io.submit(self._place, incoming, dests, bool(listings))
        future.add_done_callback(lambda f: self.notify(lambda: self._settled(incoming, listings, f)))

    def _stored(self) -> None:
        """On the loop: a chunk was written (room in the window)."""
        self._unstored -= 1
        if self.failure is None and not self._removed:
            self.on_change()

    def _place(self, incoming: Incoming, dests: list[str], listing: bool) -> bytes:
        """On ``io``: check the completed blob, make its files, keep it in the store (a listing's bytes are
        returned to be checked first)."""
        if not incoming.finish():
            raise TreeError("blob_mismatch", f"the bytes sent for {incoming.hash} do not match its hash")
        try:
            for dest in dests:
                self._place_from(incoming.path, dest)
            if listing:
                return Path(incoming.path).read_bytes()
        except BaseException:
            os.unlink(incoming.path)
            raise
        self.store.adopt(incoming.path, incoming.hash, incoming.size)
        return b""

    def _settled(self, incoming: Incoming, listings: list[int], future: Future[bytes]) -> None:
        """On the loop: a blob placed (its listings laid out and it kept) or failed. Nothing more of a job that
        failed or was removed meanwhile."""
        self._settling -= 1
        dropped = self.failure is not None or self._removed
        try:
            data = future.result()
            if listings:
                try:  # a listing is checked before it is kept: a refused one never enters the store
                    for i in [] if dropped else listings:
                        self._lay_out(i, data)
                except BaseException:
                    dropped = True
                    raise
                finally:
                    if dropped:
                        Path(incoming.path).unlink(missing_ok=True)
                if not dropped:
                    self.store.adopt(incoming.path, incoming.hash, incoming.size)
        except (TreeError, OSError) as exc:
            if self.failure is None and not self._removed:
                self.failure = exc
                self.on_change()
            return
        if not dropped:
            self.on_change()

    def _want(self, blob: str, size: int, dests: list[str], listing: int | None = None) -> None:
        """Ask for ``blob`` (once, however many places it goes): ``dests`` are files to make of it, ``listing``
        the directory whose listing it is."""
        if dests:
            self._pending.setdefault(blob, []).extend(dests)
        if listing is not None:
            self._listing_of.setdefault(blob, []).append(listing)
        if blob in self._sizes:
            return
        self._sizes[blob] = size
        for offset in range(0, size, CHUNK):
            self._queue.append((blob, offset, min(CHUNK, size - offset)))
        if size == 0:  # nothing to ask for: complete at once (an empty file's hash is still checked)
            self._open(blob)
            self._asked[blob] = 1
            self.receive(blob, 0, b"")

    def _open(self, blob: str) -> None:
        name = f"{self.root.name}-{blob_hex(blob)}"
        self._incoming[blob] = Incoming(self.store.incoming, name, blob, self._sizes[blob])

    def _lay_out(self, index: int, data: bytes) -> None:
        d = self.dirs[index]
        files_left = self.tree_files - sum(len(x.tree.files) for x in self.dirs if x.tree is not None)
        bytes_left = self.tree_bytes - sum(x.tree.file_bytes for x in self.dirs if x.tree is not None)
        d.tree = trees.parse(data, max_files=max(0, files_left), max_bytes=max(0, bytes_left))
        if not d.readonly:
            used_bytes, used_files = self.quota.used_bytes, self.quota.used_files
            if used_bytes > self.disk_bytes or used_files > self.max_files:
                raise TreeError(
                    "tree_too_big",
                    f"the writable trees take {used_bytes} bytes in {used_files} entries, more than the job's "
                    f"fs.disk_bytes {self.disk_bytes} or fs.files {self.max_files} (counted as the quota counts: "
                    "files in 4 KiB blocks, a block per directory or symlink)",
                )
        for entry in d.tree.entries:
            dest = str(d.host / entry.path)
            if entry.type == "dir":
                os.mkdir(dest, 0o755)
            elif entry.type == "symlink":
                os.symlink(entry.target, dest)
            elif d.readonly and self.store.link(entry.hash, dest):
                self.reused_bytes += entry.size
            elif not d.readonly and self._copy_from_store(entry.hash, dest):
                self.reused_bytes += entry.size
            else:
                self._want(entry.hash, entry.size, [dest])

    def _is_writable(self, dest: str) -> bool:
        for d in self.dirs:
            if dest.startswith(str(d.host) + os.sep):
                return not d.readonly
        return False

    def _copy_from_store(self, blob: str, dest: str) -> bool:
        tmp = dest + ".link"
        if not self.store.link(blob, tmp):
            return False
        try:
            shutil.copyfile(tmp, dest)
        finally:
            os.unlink(tmp)
        return True

    def _place_from(self, source: str, dest: str) -> None:
        if self._is_writable(dest):
            shutil.copyfile(source, dest)
        else:
            os.link(source, dest)

    def finish_layout(self) -> None:
        """Once every blob is here: modes of the writable copies, and what they are now (to tell changes later)."""
        for d in self.dirs:
            assert d.tree is not None
            if d.readonly:
                continue
            for entry in d.tree.files:
                path = d.host / entry.path
                os.chmod(path, entry.mode)
                st = os.stat(path)
                self._baseline[f"{d.host}/{entry.path}"] = (st.st_ino, st.st_size, st.st_ctime_ns)

    @property
    def quota(self) -> FsQuota:
        """The bound on the writable directories, with what their input trees take already."""
        sizes = [e.size for d in self.dirs if not d.readonly and d.tree for e in d.tree.entries if e.type == "file"]
        others = sum(1 for d in self.dirs if not d.readonly and d.tree for e in d.tree.entries if e.type != "file")
        return FsQuota(self.disk_bytes, self.max_files, *usage(sizes, others))

    @property
    def preopens(self) -> list[Preopen]:
        return [Preopen(str(d.host), d.guest, d.readonly) for d in self.dirs]

    # ---- outputs -------------------------------------------------------------------------------------

    def collect_outputs(self) -> trees.Tree:
        """The tree of new and changed files in the writable directories (their ancestors as directories), each
        under its directory's guest path without the leading ``/``. :class:`TreeError` ``output_limit`` when they
        hold more than ``files`` files or ``disk_bytes`` bytes."""
        entries: dict[str, trees.Entry] = {}
        files = total = 0
        for d in self.dirs:
            if d.readonly or d.tree is None:
                continue
            prefix = d.guest.strip("/")
            known = {e.path: e for e in d.tree.files}
            for rel, full, st in _walk_bounded(d.host, self.max_files * 4 + 64):
                if not stat.S_ISREG(st.st_mode):
                    continue
                base = known.get(rel)
                if base is not None and self._baseline.get(full) == (st.st_ino, st.st_size, st.st_ctime_ns):
                    continue
                files += 1
                total += st.st_size
                if files > self.max_files or total > self.disk_bytes:
                    raise TreeError(
                        "output_limit",
                        f"the job left more than {self.max_files} files or {self.disk_bytes} bytes "
                        f"(manifest fs.files, fs.disk_bytes) in its writable directories",
                    )
                digest, size = trees.hash_file(full)
                if base is not None and base.hash == digest:
                    continue
                path = f"{prefix}/{rel}" if prefix else rel
                if trees.check_path(path) is not None:
                    continue
                entries[path] = trees.Entry(path, "file", size=size, mode=trees.file_mode(st.st_mode), hash=digest)
                self.output_paths.setdefault(digest, full)
        for path in list(entries):
            parent = os.path.dirname(path)
            while parent and parent not in entries:
                entries[parent] = trees.Entry(parent, "dir")
                parent = os.path.dirname(parent)
        self.outputs = trees.build(entries.values())
        return self.outputs

    def read_output(self, blob: str, offset: int, size: int) -> bytes | None:
        """Bytes of an output blob (the listing included) for a client's ``want``; None if it names none."""
        if self.outputs is None:
            return None
        if blob == self.outputs.hash:
            return self.outputs.data[offset : offset + size]
        path = self.output_paths.get(blob)
        if path is None:
            return None
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def remove(self) -> None:
        """Delete everything of the job (on ``io``, after the writes already given to it)."""
        self._removed = True
        incoming, self._incoming = list(self._incoming.values()), {}
        self.io.submit(self._remove_now, incoming)

    def _remove_now(self, incoming: list[Incoming]) -> None:
        for part in incoming:
            part.discard()
        shutil.rmtree(self.root, ignore_errors=True)


def _walk_bounded(base: Path, limit: int) -> list[tuple[str, str, os.stat_result]]:
    """Every entry beneath ``base`` (relative path, host path, lstat), not following symlinks; at most ``limit``
    entries looked at (a job that made a million empty directories is refused, not walked)."""
    out: list[tuple[str, str, os.stat_result]] = []
    stack = [("", str(base))]
    while stack:
        rel, full = stack.pop()
        with os.scandir(full) as it:
            for item in it:
                if len(out) >= limit:
                    raise TreeError("output_limit", f"the job left more than {limit} entries in its directories")
                path = f"{rel}/{item.name}" if rel else item.name
                st = item.stat(follow_symlinks=False)
                out.append((path, item.path, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((path, item.path))
    return out
