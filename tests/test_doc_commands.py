"""Every command and snippet in README.md and docs/*.md works as written, or says why it is not run here.

Each fenced block is one of:

* ``sh`` / ``python``: run, in document order, in one bash session per document (a user following the page),
  in a scratch directory holding ``examples/``; placeholders the page cannot know (its data directories, its
  port) are filled by the fixture below: a node the page starts itself, a kernel found in ``/boot``.
* marked ``<!-- doctest: illustrative (REASON) -->`` on the line before the fence: not run (it needs Tor,
  QEMU, three nodes, the whole suite...), but every ``phase``/``plasmd``/build-script/QEMU flag in it must exist
  in that command's ``--help``;
* ``text`` marked ``<!-- doctest: synopsis -->``: the same flag check on a command summary;
* any other language (``json``, ``text``, ``toml``): data, not checked. A fence without a language fails: say
  what the block is.

``<!-- doctest: skip-prefix "PREFIX" (REASON) -->`` runs a block without that prefix (README's install step).
When a page and the code disagree, this test fails.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(illustrative|synopsis|skip-prefix)\s*(.*?)\s*-->\s*$")
RUN_LANGS = {"sh", "python"}
SHELL_LANGS = {"sh", "bash", "shell", "console"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    directive: str
    argument: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        d = DIRECTIVE.search(before)
        found.append(Block(doc, line, m.group(1), m.group(2), d.group(1) if d else "", d.group(2) if d else ""))
    return found


ALL = [b for doc in DOCS for b in blocks(doc)]


def test_every_block_says_what_it_is():
    unlabelled = [b.where for b in ALL if not b.lang]
    assert not unlabelled, f"fences without a language (```sh, ```python, ```text, ...): {unlabelled}"
    for b in ALL:
        if b.directive == "illustrative":
            assert re.fullmatch(r"\(.+\)", b.argument), f"{b.where}: illustrative needs (a reason)"
        if b.lang in SHELL_LANGS - RUN_LANGS:
            pytest.fail(f"{b.where}: write ```sh for shell (bash, console are not run)")


# ---- flags against --help ------------------------------------------------------------------------------------


def _help_command(words: list[str]) -> list[str] | None:
    """The --help command for a command line's words, or None when it is not one of ours (or QEMU)."""
    if not words:
        return None
    first = os.path.basename(words[0])
    if first == "phase" or words[:3] in (["python", "-m", "pyphase"], ["python3", "-m", "pyphase"]):
        rest = words[1:] if first == "phase" else words[3:]
        sub = []
        for w in rest[:2]:  # 'phase boot sign', 'phase dht rendezvous', 'phase run MODULE'
            if w.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", w):
                break
            sub.append(w)
        return [sys.executable, "-m", "pyphase", *sub, "--help"]
    if first in ("python", "python3") and words[1:3] == ["-m", "pyphase.boot"]:
        return [sys.executable, "-m", "pyphase", "boot", *words[3:4], "--help"]
    if first == "plasmd" or words[1:3] == ["-m", "pyphase.daemon"]:
        return [sys.executable, "-m", "pyphase.daemon", "--help"]
    if first.endswith(".sh") and words[0].startswith(("initramfs/", "bootloader/")) and (ROOT / words[0]).exists():
        return [str(ROOT / words[0]), "--help"]
    if first == "qemu-system-x86_64":
        return ["qemu-system-x86_64", "-help"]
    return None


@functools.lru_cache(maxsize=None)
def _help_text(command: tuple[str, ...]) -> str:
    if command[0] == "qemu-system-x86_64" and shutil.which(command[0]) is None:
        return ""
    out = subprocess.run(list(command), capture_output=True, text=True, timeout=60, cwd=ROOT)
    return out.stdout + out.stderr


def _commands(code: str) -> list[str]:
    """Command lines of a shell block or synopsis: continuations joined, comments dropped, split at && | ; &."""
    joined = re.sub(r"\\\n\s*", " ", code)
    lines: list[str] = []
    for line in joined.splitlines():
        if line[:1].isspace() and lines and not line.strip().startswith("#"):
            lines[-1] += " " + line.strip()  # a synopsis continues a command on indented lines
        else:
            lines.append(line)
    out = []
    for line in lines:
        line = re.sub(r"(^|\s)#.*$", "", line)
        for part in re.split(r"&&|\|\||(?<!\[)\|(?![^\[]*\])|;|&(?!\w)", line):
            if part.strip():
                out.append(part.strip())
    return out


def _flags_unknown(command: str) -> list[str]:
    words = command.replace("[", " ").replace("]", " ").split()
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
        words = words[1:]
    helper = _help_command(words)
    if helper is None:
        return []
    text = _help_text(tuple(helper))
    if not text:
        return []
    if helper[0] == "qemu-system-x86_64":
        options = {w for w in words[1:] if re.fullmatch(r"-[a-z][a-z0-9-]*", w)}
        return sorted(o for o in options if not re.search(rf"^{re.escape(o)}\b", text, re.M))
    return sorted(f for f in set(FLAG.findall(command)) if not re.search(rf"{re.escape(f)}(?![\w-])", text))


CHECKED = [b for b in ALL if b.lang in RUN_LANGS - {"python"} or b.directive == "synopsis"]


@pytest.mark.parametrize("block", CHECKED, ids=[b.where for b in CHECKED])
def test_every_flag_a_page_shows_exists(block: Block):
    unknown = {c: u for c in _commands(block.code) if (u := _flags_unknown(c))}
    assert not unknown, f"{block.where}: flags not in the command's --help: {unknown}"


# ---- running the pages ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _placeholders(work: Path) -> dict[str, str]:
    """What a page names that only this machine can fill: its directories and ports, a kernel."""
    port = _free_port()
    return {
        "/var/lib/phase": str(work / "var-lib-phase"),
        "/tmp/n1": str(work / "n1"),
        "127.0.0.1:7465": f"127.0.0.1:{port}",
        "127.0.0.1:7070": f"127.0.0.1:{port}",
        "0.0.0.0:8080": f"127.0.0.1:{_free_port()}",
    }


def _script(doc: Path, work: Path) -> str | None:
    subs = _placeholders(work)
    parts = ["set -euo pipefail"]
    ran = False
    for b in blocks(doc):
        if b.lang not in RUN_LANGS or b.directive in ("illustrative", "synopsis"):
            continue
        code = b.code
        if b.directive == "skip-prefix":
            prefix = re.match(r'"([^"]*)"', b.argument)
            assert prefix and prefix.group(1) in code, f"{b.where}: skip-prefix must quote text of the block"
            code = code.replace(prefix.group(1), "")
        for old, new in subs.items():
            code = code.replace(old, new)
        parts.append(f"echo '=== {b.where}' >&2")
        if b.lang == "python":
            parts.append(f"python3 - <<'PHASE_DOC_PY'\n{code}PHASE_DOC_PY")
        else:
            parts.append(code)
        ran = True
    return "\n".join(parts) + "\n" if ran else None


# Files a page's run needs that an illustrative block before it would have made: a stand-in of the same name.
STAND_INS = {"BOOT.md": {"build/stage2.cpio.gz": b"stand-in for the node image step 2 builds\n"}}


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_a_page_runs_as_written(doc: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    for name, data in STAND_INS.get(doc.name, {}).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    if "/boot/vmlinuz-" in doc.read_text() and not list(Path("/boot").glob("vmlinuz-*")):
        pytest.skip("no kernel in /boot (bash .ci/setup --test installs one)")
    script = _script(doc, work)
    if script is None:
        return  # nothing to run on this page (every block is data)
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PHASE_HOME": str(tmp_path / "home"),
        "PHASE_MDNS_INTERFACES": "127.0.0.1",
    }  # HOME stays: zig keeps its compiled libc there
    env.pop("PHASE_SOCKS_PROXY", None)
    # files, not pipes: a server the page leaves running in the background would hold a pipe open
    with open(tmp_path / "out", "w+") as out_f, open(tmp_path / "err", "w+") as err_f:
        proc = subprocess.Popen(
            ["bash", "-c", script], cwd=work, env=env, stdout=out_f, stderr=err_f, start_new_session=True
        )
        try:
            proc.wait(timeout=240)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # a node or server the page left running
            except ProcessLookupError:
                pass
            proc.kill()
            proc.wait()
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    assert proc.returncode == 0, f"{doc.name} failed (exit {proc.returncode}):\n--- stdout\n{out}\n--- stderr\n{err}"
