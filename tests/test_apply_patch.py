"""tools/apply_patch.py: the build's own unified-diff applier (no `patch` or `git` on the machine). Exact or not at
all: a hunk whose context differs by one byte is refused and the tree is left as it was."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("apply_patch", ROOT / "tools" / "apply_patch.py")
assert _spec is not None and _spec.loader is not None
apply_patch = importlib.util.module_from_spec(_spec)
sys.modules["apply_patch"] = apply_patch
_spec.loader.exec_module(apply_patch)

ORIGINAL = "".join(f"line {n}\n" for n in range(1, 21))
PATCH = """From: someone
Subject: [PATCH] change two places and add a file

---
 a.txt | 3 ++-
 1 file changed

diff --git a/d/a.txt b/d/a.txt
--- a/d/a.txt
+++ b/d/a.txt
@@ -2,3 +2,3 @@
 line 2
-line 3
+line three
 line 4
@@ -15,3 +15,4 @@
 line 15
 line 16
+line 16.5
 line 17
diff --git a/d/new.h b/d/new.h
new file mode 100644
--- /dev/null
+++ b/d/new.h
@@ -0,0 +1,2 @@
+#pragma once
+int new_thing(void);
--
2.39.2
"""


def _tree(tmp_path: Path, text: str = ORIGINAL) -> Path:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text(text)
    (tmp_path / "p.patch").write_text(PATCH)
    return tmp_path


def test_applies_hunks_and_creates_files(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    apply_patch.apply(root / "p.patch", root)
    lines = (root / "d" / "a.txt").read_text().splitlines()
    assert lines[2] == "line three" and lines[16] == "line 16.5" and len(lines) == 21
    assert (root / "d" / "new.h").read_text() == "#pragma once\nint new_thing(void);\n"


def test_hunks_moved_by_earlier_changes_are_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, "inserted above\n" * 4 + ORIGINAL)
    apply_patch.apply(root / "p.patch", root)
    assert (root / "d" / "a.txt").read_text().splitlines()[6] == "line three"


def test_a_context_mismatch_changes_nothing(tmp_path: Path) -> None:
    changed = ORIGINAL.replace("line 17\n", "line 17 \n")
    root = _tree(tmp_path, changed)
    with pytest.raises(apply_patch.PatchError, match="hunk 2"):
        apply_patch.apply(root / "p.patch", root)
    assert (root / "d" / "a.txt").read_text() == changed
    assert not (root / "d" / "new.h").exists()


def test_applying_twice_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    apply_patch.apply(root / "p.patch", root)
    with pytest.raises(apply_patch.PatchError):
        apply_patch.apply(root / "p.patch", root)


def test_missing_newline_at_end_of_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"a\nb")
    (tmp_path / "p").write_bytes(
        b"--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n"
    )
    apply_patch.apply(tmp_path / "p", tmp_path)
    assert (tmp_path / "f").read_bytes() == b"a\nc"


@pytest.mark.parametrize(
    "text",
    [
        b"no diff here\n",
        b"--- a/f\n+++ b/f\n@@ -1,2 +1,2 @@\n a\n",  # ends inside a hunk
        b"--- a/../f\n+++ b/../f\n@@ -1 +1 @@\n-a\n+b\n",  # leaves the tree
        b"--- a/f\n+++ b/f\n@@ -1 +1 @@\n?a\n+b\n",  # not a hunk line
    ],
)
def test_malformed_patches_are_refused(tmp_path: Path, text: bytes) -> None:
    (tmp_path / "f").write_bytes(b"a\n")
    (tmp_path / "p").write_bytes(text)
    with pytest.raises(apply_patch.PatchError):
        apply_patch.apply(tmp_path / "p", tmp_path)
    assert (tmp_path / "f").read_bytes() == b"a\n"
