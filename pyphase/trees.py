"""Content-addressed directory trees: what a remote job is given to read and what it hands back.

A *tree listing* names every entry of a directory by its path relative to the root: directories,
regular files (size, mode, ``sha256:`` of the bytes) and symlinks (their target, which must stay inside).
Its canonical bytes (:func:`pyphase.signing.canonical_bytes`: sorted keys, no white space) are hashed like
any blob; that hash is what a manifest names for an input directory and a receipt for the job's outputs.
The file bytes travel separately, each named by its hash, so a node that holds one already never asks
for it again (docs/NETWORK.md, "Files").

Canonical means one listing per tree: entries sorted by path, every parent directory listed, file modes
only ``0o644`` or ``0o755`` (the executable bit is all that is kept), no timestamps, owners or inode numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from pyphase.digests import is_hash_text, sha256_text
from pyphase.errors import TreeError
from pyphase.signing import canonical_bytes

__all__ = [
    "TREE_VERSION",
    "Entry",
    "Tree",
    "build",
    "check_path",
    "parse",
    "scan",
    "hash_file",
    "verify_dir",
    "write_file_from",
]

TREE_VERSION = 1
FILE_MODES = (0o644, 0o755)
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
ENTRY_BYTES = 512  # the most one listing entry may take on average: bounds a listing's bytes by its file count
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One entry of a tree: ``type`` is ``dir``, ``file`` (``size``, ``mode``, ``hash``) or ``symlink``
    (``target``)."""

    path: str
    type: str
    size: int = 0
    mode: int = 0
    hash: str = ""
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.type == "file":
            return {"path": self.path, "type": "file", "size": self.size, "mode": self.mode, "hash": self.hash}
        if self.type == "symlink":
            return {"path": self.path, "type": "symlink", "target": self.target}
        return {"path": self.path, "type": "dir"}


@dataclass(frozen=True)
class Tree:
    """A checked tree listing: its entries in order and the canonical bytes they make."""

    entries: tuple[Entry, ...]
    data: bytes

    @property
    def hash(self) -> str:
        return sha256_text(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def ref(self) -> dict[str, Any]:
        """``{"hash", "size"}`` of the listing, as manifests and receipts name it."""
        return {"hash": self.hash, "size": self.size}

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.type == "file"]

    @property
    def file_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.type == "file")

    def blobs(self) -> dict[str, int]:
        """Each distinct file content: hash -> size."""
        return {e.hash: e.size for e in self.entries if e.type == "file"}


def check_path(path: object) -> str | None:
    """Why ``path`` cannot name an entry of a tree (None: it can): relative, no empty, ``.`` or ``..``
    component, no NUL, at most 4096 bytes of UTF-8 and 255 per name."""
    if not isinstance(path, str) or not path:
        return "an empty path"
    if path.startswith("/"):
        return f"an absolute path {path[:64]!r}"
    if "\0" in path:
        return "a path with a NUL byte"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "a path that is not UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return f"a path longer than {MAX_PATH_BYTES} bytes"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"a path with a {part!r} component: {path[:64]!r}" if part else f"an empty component: {path[:64]!r}"
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            return f"a name longer than {MAX_NAME_BYTES} bytes"
    return None


def _target_inside(link_path: str, target: str) -> bool:
    """Whether a symlink at ``link_path`` to ``target`` stays beneath the tree's root, read lexically."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    depth = link_path.count("/")  # components of the link's own directory
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def build(entries: Iterable[Entry]) -> Tree:
    """The canonical listing of ``entries`` (sorted; parents must be listed)."""
    ordered = tuple(sorted(entries, key=lambda e: e.path))
    data = canonical_bytes({"version": TREE_VERSION, "entries": [e.to_json() for e in ordered]})
    return Tree(ordered, data)


def parse(data: bytes, *, max_files: int, max_bytes: int) -> Tree:
    """Check a listing received from a peer: JSON in canonical form, every path inside, every parent listed,
    no duplicates, symlinks staying inside, at most ``max_files`` files of ``max_bytes`` together.
    :class:`TreeError` names the first problem; its ``reason`` is ``bad_tree`` or ``tree_too_big``."""
    if len(data) > max(1, max_files) * ENTRY_BYTES + 1024:
        raise TreeError("tree_too_big", f"a listing of {len(data)} bytes for at most {max_files} files")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TreeError("bad_tree", "the listing is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"version", "entries"} or doc["version"] != TREE_VERSION:
        raise TreeError("bad_tree", f'a listing is {{"version": {TREE_VERSION}, "entries": [...]}}')
    raw = doc["entries"]
    if not isinstance(raw, list):
        raise TreeError("bad_tree", "entries is not a list")
    entries: list[Entry] = []
    dirs: set[str] = {""}
    previous = None
    files = total = 0
    for item in raw:
        entry = _entry(item)
        if previous is not None and entry.path <= previous:
            if entry.path == previous:
                raise TreeError("bad_tree", f"a duplicate path {entry.path[:64]!r}")
            raise TreeError("bad_tree", f"entries out of order at {entry.path[:64]!r}")
        previous = entry.path
        parent = posixpath.dirname(entry.path)
        if parent not in dirs:
            raise TreeError("bad_tree", f"{entry.path[:64]!r} has no directory entry for {parent[:64]!r}")
        if entry.type == "dir":
            dirs.add(entry.path)
        elif entry.type == "file":
            files += 1
            total += entry.size
            if files > max_files:
                raise TreeError("tree_too_big", f"more than {max_files} files")
            if total > max_bytes:
                raise TreeError("tree_too_big", f"more than {max_bytes} bytes of files")
        elif not _target_inside(entry.path, entry.target):
            raise TreeError("bad_tree", f"the symlink {entry.path[:64]!r} points outside the tree")
        entries.append(entry)
    tree = build(entries)
    if tree.data != bytes(data):
        raise TreeError("bad_tree", "the listing is not in canonical form (sorted keys, no white space)")
    return tree


def _entry(item: Any) -> Entry:
    if not isinstance(item, dict):
        raise TreeError("bad_tree", "an entry is not an object")
    path = item.get("path")
    why = check_path(path)
    if why:
        raise TreeError("bad_tree", f"{why}")
    assert isinstance(path, str)
    kind = item.get("type")
    keys = {
        "dir": {"path", "type"},
        "file": {"path", "type", "size", "mode", "hash"},
        "symlink": {"path", "type", "target"},
    }
    if kind not in keys or set(item) != keys[kind]:
        raise TreeError("bad_tree", f"{path[:64]!r}: an entry is a dir, file or symlink with exactly its fields")
    if kind == "file":
        size, mode, digest = item["size"], item["mode"], item["hash"]
        if (
            type(size) is not int
            or size < 0
            or mode not in FILE_MODES
            or type(mode) is not int
            or not is_hash_text(digest)
        ):
            raise TreeError("bad_tree", f"{path[:64]!r}: size, mode (420 or 493) or hash malformed")
        return Entry(path, "file", size=size, mode=mode, hash=digest)
    if kind == "symlink":
        target = item["target"]
        if not isinstance(target, str) or not target or len(target.encode("utf-8", "replace")) > MAX_PATH_BYTES:
            raise TreeError("bad_tree", f"{path[:64]!r}: a symlink target is a non-empty path")
        return Entry(path, "symlink", target=target)
    return Entry(path, "dir")


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``sha256:`` and size of a file, read in 1 MiB chunks (never whole into memory)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


_known: OrderedDict[tuple[int, ...], tuple[str, int]] = OrderedDict()
KNOWN_FILES = 100_000
RACY_NS = 100_000_000
_known_lock = threading.Lock()


def _hash_known(path: str, st: os.stat_result) -> tuple[str, int]:
    """``hash_file``, remembered in this process by (device, inode, size, mtime, ctime): sending the same tree
    again does not read it again (any write changes ctime, which no one can set back)."""
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _known_lock:
        found = _known.get(key)
        if found is not None:
            _known.move_to_end(key)
            return found
    found = hash_file(path)
    # not changed while it was read, and not changed so recently that a change within the same clock tick
    # (file times are as coarse as the kernel's tick) could leave every key field as it is
    if found[1] == st.st_size and time.time_ns() - st.st_ctime_ns > RACY_NS:
        with _known_lock:
            _known[key] = found
            while len(_known) > KNOWN_FILES:
                _known.popitem(last=False)
    return found


def forget_hashes() -> None:
    """Forget the file hashes this process remembers (the next scan reads every file again)."""
    with _known_lock:
        _known.clear()


def file_mode(st_mode: int) -> int:
    return 0o755 if st_mode & 0o100 else 0o644


def scan(
    root: str | os.PathLike[str], *, max_files: int | None = None, only: Callable[[str], bool] | None = None
) -> tuple[Tree, dict[str, str]]:
    """The listing of the host directory ``root`` and where each blob's bytes are (hash -> host path).
    Refuses (:class:`TreeError`) names that are not UTF-8, special files, and symlinks leading outside."""
    base = Path(root)
    if not base.is_dir():
        raise TreeError("bad_tree", f"not a directory: {root}")
    entries: list[Entry] = []
    where: dict[str, str] = {}
    for rel, full, st in _walk(base):
        if only is not None and not only(rel):
            continue
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(rel, "dir"))
        elif stat.S_ISREG(st.st_mode):
            digest, size = _hash_known(full, st)
            entries.append(Entry(rel, "file", size=size, mode=file_mode(st.st_mode), hash=digest))
            where.setdefault(digest, full)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            if not _target_inside(rel, target):
                raise TreeError("bad_tree", f"the symlink {full} -> {target} points outside {root}")
            entries.append(Entry(rel, "symlink", target=target))
        else:
            raise TreeError("bad_tree", f"{full} is neither a file, a directory nor a symlink")
        if max_files is not None and len(entries) > max_files:
            raise TreeError("tree_too_big", f"{root} holds more than {max_files} entries")
    return build(entries), where


def _walk(base: Path, rel: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    with os.scandir(base / rel if rel else base) as it:
        items = sorted(it, key=lambda e: e.name)
    for item in items:
        try:
            name = item.name.encode("utf-8", "strict").decode("utf-8")
        except UnicodeError:
            raise TreeError("bad_tree", f"{item.path!r}: names must be UTF-8") from None
        path = f"{rel}/{name}" if rel else name
        why = check_path(path)
        if why:
            raise TreeError("bad_tree", f"{item.path}: {why}")
        st = item.stat(follow_symlinks=False)
        yield path, item.path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(base, path)


def write_file_from(dest: str, chunks: Iterable[bytes], digest: str, size: int, mode: int) -> None:
    """Write a file from ``chunks``, checking its size and hash before it takes its name (``TreeError``)."""
    tmp = dest + ".part"
    h = hashlib.sha256()
    written = 0
    with open(tmp, "wb") as f:
        for chunk in chunks:
            written += len(chunk)
            if written > size:
                break
            h.update(chunk)
            f.write(chunk)
    if written != size or "sha256:" + h.hexdigest() != digest:
        os.unlink(tmp)
        raise TreeError("blob_mismatch", f"the bytes received for {dest} do not match {digest}")
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


def listing_path(root: str | os.PathLike[str]) -> Path:
    """Where ``phase submit --out DIR`` keeps the output tree's listing: ``DIR.tree.json`` beside it, so that
    ``phase verify --outputs DIR`` can name the files that differ (the listing is trusted only when its hash is
    the one the signed receipt names)."""
    path = Path(os.path.abspath(root))
    return path.with_name(path.name + ".tree.json")


def verify_dir(root: str | os.PathLike[str], expected: Mapping[str, Any], listing: bytes | None = None) -> Tree:
    """Check that the directory ``root`` is exactly the tree ``expected`` (``{"hash", "size"}``) names; return
    its listing, or raise :class:`TreeError` saying how it differs: file by file (changed, missing, not in the
    tree) when ``listing`` is the expected tree's listing, else by the two hashes."""
    tree, _ = scan(root)
    if tree.hash == expected.get("hash"):
        return tree
    if listing is not None and sha256_text(listing) == expected.get("hash"):
        big = 1 << 62  # the signed receipt names this listing: its size was bounded where it was written
        want = {e.path: e for e in parse(listing, max_files=big, max_bytes=big).entries}
        have = {e.path: e for e in tree.entries}
        problems = [
            f"{path}: {'missing' if path not in have else 'changed'}"
            for path, entry in want.items()
            if have.get(path) != entry
        ] + [f"{path}: not in the tree" for path in have if path not in want]
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise TreeError("bad_tree", f"{root} is not the tree the receipt names: {shown}")
    raise TreeError(
        "bad_tree",
        f"{root} is not the tree the receipt names: its listing hashes to {tree.hash}, "
        f"the receipt says {expected.get('hash')} (without {listing_path(root).name} beside it the files that "
        "differ cannot be named)",
    )
