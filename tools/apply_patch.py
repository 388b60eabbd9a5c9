#!/usr/bin/env python3
"""Apply a unified diff (``git format-patch`` output) exactly, in Python: the build needs no ``patch`` or ``git``.

Like ``patch -p1 --forward --batch`` with no fuzz: every hunk's context and removed lines must match the file
byte for byte, at the line its header names or, if earlier hunks of other patches moved it, at the nearest
place where they do. Files a patch creates (``--- /dev/null``) must not exist yet. Nothing is written unless
every hunk of every file in the patch applies, so a patch that does not apply leaves the tree as it was.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NO_NEWLINE = b"\\ No newline at end of file"


class PatchError(Exception):
    """The patch is malformed or does not apply to the tree."""


@dataclass
class Hunk:
    old_start: int
    old: list[bytes] = field(default_factory=list)  # context and removed lines, with their line endings
    new: list[bytes] = field(default_factory=list)  # context and added lines


@dataclass
class FilePatch:
    old_path: str | None  # None: the patch creates the file
    new_path: str
    hunks: list[Hunk] = field(default_factory=list)


def _path(header: bytes, strip: int) -> str | None:
    name = header.split(b"\t")[0].strip().decode()
    if name == "/dev/null":
        return None
    parts = name.split("/")
    if len(parts) <= strip or ".." in parts[strip:]:
        raise PatchError(f"unusable path in the patch: {name!r}")
    return "/".join(parts[strip:])


def parse(text: bytes, strip: int = 1) -> list[FilePatch]:
    """The files and hunks of a unified diff; anything around them (mail headers, diffstat, signature) is skipped."""
    lines = text.splitlines(keepends=True)
    files: list[FilePatch] = []
    i = 0
    while i < len(lines):
        if not (lines[i].startswith(b"--- ") and i + 1 < len(lines) and lines[i + 1].startswith(b"+++ ")):
            i += 1
            continue
        new_path = _path(lines[i + 1][4:], strip)
        if new_path is None:
            raise PatchError("deleting files is not supported")
        current = FilePatch(_path(lines[i][4:], strip), new_path)
        files.append(current)
        i += 2
        while i < len(lines) and (match := HUNK.match(lines[i])):
            old_count = int(match.group(2) or b"1")
            new_count = int(match.group(4) or b"1")
            hunk = Hunk(old_start=int(match.group(1)))
            i += 1
            while len(hunk.old) < old_count or len(hunk.new) < new_count:
                if i >= len(lines):
                    raise PatchError(f"{new_path}: the patch ends inside a hunk")
                line = lines[i]
                kind, body = line[:1], line[1:]
                if line.rstrip(b"\r\n") == b"":  # an empty context line whose space was stripped
                    kind, body = b" ", line
                if kind not in (b" ", b"-", b"+"):
                    raise PatchError(f"{new_path}: unexpected line in a hunk: {line!r}")
                if kind in (b" ", b"-"):
                    hunk.old.append(body)
                if kind in (b" ", b"+"):
                    hunk.new.append(body)
                i += 1
                if i < len(lines) and lines[i].rstrip(b"\r\n") == NO_NEWLINE:
                    for side in [hunk.old] if kind == b"-" else [hunk.new] if kind == b"+" else [hunk.old, hunk.new]:
                        side[-1] = side[-1].rstrip(b"\r\n")
                    i += 1
            if len(hunk.old) != old_count or len(hunk.new) != new_count:
                raise PatchError(f"{new_path}: a hunk's line counts do not match its header")
            current.hunks.append(hunk)
        if not current.hunks:
            raise PatchError(f"{new_path}: no hunks")
    if not files:
        raise PatchError("no file changes found (not a unified diff?)")
    return files


def _find(lines: list[bytes], old: list[bytes], start: int, floor: int) -> int:
    """Where ``old`` matches ``lines`` exactly, at ``start`` or the nearest place after ``floor``; -1 if nowhere."""
    last = len(lines) - len(old)
    for distance in range(max(start - floor, last - start) + 1):
        for at in (start - distance, start + distance):
            if floor <= at <= last and lines[at : at + len(old)] == old:
                return at
    return -1


def patched(original: bytes, file: FilePatch) -> bytes:
    """The file's new content; PatchError if any hunk does not match exactly."""
    lines = original.splitlines(keepends=True)
    out: list[bytes] = []
    position = 0
    for number, hunk in enumerate(file.hunks, 1):
        start = max(hunk.old_start - 1, 0) if hunk.old else hunk.old_start
        at = _find(lines, hunk.old, start, position)
        if at < 0:
            raise PatchError(f"{file.new_path}: hunk {number} (at line {hunk.old_start}) does not match")
        out += lines[position:at] + hunk.new
        position = at + len(hunk.old)
    return b"".join(out + lines[position:])


def apply(patch: Path, root: Path, strip: int = 1) -> list[Path]:
    """Apply every file change of ``patch`` under ``root``, all or nothing; the files written."""
    results: dict[Path, bytes] = {}
    for file in parse(patch.read_bytes(), strip):
        target = root / file.new_path
        if file.old_path is None:
            if target.exists():
                raise PatchError(f"{file.new_path}: the patch creates it but it exists (applied already?)")
            original = b""
        elif not target.is_file():
            raise PatchError(f"{file.old_path}: no such file")
        else:
            original = target.read_bytes()
        results[target] = patched(results.get(target, original), file)
    for target, content in results.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return list(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patches", nargs="+", type=Path, help="unified diffs, applied in the order given")
    parser.add_argument("-d", "--directory", type=Path, default=Path("."), help="tree to patch (default: .)")
    parser.add_argument("-p", "--strip", type=int, default=1, help="leading path components to strip (default: 1)")
    args = parser.parse_args()
    for patch in args.patches:
        try:
            apply(patch, args.directory, args.strip)
        except (PatchError, OSError) as error:
            sys.exit(f"apply_patch: {patch.name} does not apply: {error}")


if __name__ == "__main__":
    main()
