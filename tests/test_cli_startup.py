"""What a ``phase`` process loads: each command only what it uses, so that a fresh process starts in a fraction of
what importing everything took (BENCHMARKS.md, "Start-up"). Each check runs a fresh interpreter and counts only the
modules loaded after the interpreter's own start (a site .pth may import certifi, which reads importlib.resources)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyphase.cli

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

# What none of run, verify and submit needs: the boot server and its HTTP stack, the node's API, the DHT, LAN
# discovery, asyncio (pulled in by zmq.utils.monitor), SOCKS, and the readers importlib brings for package data.
NEVER = {
    "aiohttp",
    "asyncio",
    "ssl",
    "email",
    "zipfile",
    "tempfile",
    "importlib.resources",
    "importlib.metadata",
    "libtorrent",
    "zeroconf",
    "prometheus_client",
    "python_socks",
    "pyphase.boot.server",
    "pyphase.api",
    "pyphase.cli.boot",
    "pyphase.cli.dht",
    "pyphase.cli.history",
    "pyphase.net.dht",
    "pyphase.daemon",
}
# What a local run without a receipt does not need either: signing, schemas, the network.
NOT_FOR_A_RUN = NEVER | {"nacl", "fastjsonschema", "pyphase.receipt", "pyphase.manifest", "zmq", "pyphase.cli.net"}
# ... nor a thread pool (its one job runs on the calling thread; concurrent.futures imports logging)
NOT_FOR_A_RUN |= {"concurrent.futures", "logging"}


def loaded_by(code: str, watch: set[str], env: dict[str, str] | None = None) -> list[str]:
    """The modules of ``watch`` that ``code`` loads in a fresh interpreter (beyond what it had before)."""
    probe = (
        "import json, sys\nbefore = set(sys.modules)\n"
        + code
        + f"\nprint('\\nLOADED', json.dumps(sorted(set({sorted(watch)!r}) & (set(sys.modules) - before))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=True
    )
    loaded: list[str] = json.loads(out.stdout.rpartition("LOADED ")[2])  # after whatever the command printed
    return loaded


def test_parsing_a_run_command_line_imports_neither_other_commands_nor_their_libraries() -> None:
    code = "from pyphase.cli import build_parser\nbuild_parser('run').parse_args(['run', 'x.wasm'])"
    assert loaded_by(code, NOT_FOR_A_RUN | {"sqlite3", "pyphase.sandbox", "pyphase.runtime"}) == []


def test_a_whole_local_run_loads_only_what_it_uses(tmp_path: Path) -> None:
    """The job really runs (in the sandbox, engine auto, with its data dir): still no signing library, schema
    compiler, network stack or other command."""
    env = {**os.environ, "PHASE_HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "data")}
    code = f"from pyphase.cli import main\nassert main(['run', {str(HELLO)!r}, '--input', 'abc']) == 0"
    assert loaded_by(code, NOT_FOR_A_RUN, env) == []


def test_a_compiled_run_loads_no_package_metadata_reader(tmp_path: Path) -> None:
    """Loading the compiling engine checks the wasmtime wheel's version from its dist-info directory's name:
    importlib.metadata (email, zipfile, csv: 25-80 ms here) is left to an install with none or several."""
    env = {**os.environ, "PHASE_HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "data")}
    code = (
        "from pyphase.cli import main\n"
        f"assert main(['run', {str(HELLO)!r}, '--input', 'abc', '--engine', 'wasmtime']) == 0\n"
        "from pyphase import engines\nassert engines._loaded"
    )
    assert loaded_by(code, NOT_FOR_A_RUN, env) == []


def test_verify_loads_no_sqlite_network_or_engine_history(tmp_path: Path) -> None:
    env = {**os.environ, "PHASE_HOME": str(tmp_path / "home")}
    receipt = tmp_path / "r.json"
    run = [sys.executable, "-m", "pyphase", "run", str(HELLO), "--input", "abc", "--receipt", str(receipt)]
    subprocess.run(run, check=True, capture_output=True, env=env, timeout=120)
    code = (
        "from pyphase.cli import main\n"
        f"assert main(['verify', {str(receipt)!r}, '--module', {str(HELLO)!r}, '--input-text', 'abc']) == 0"
    )
    assert loaded_by(code, NEVER | {"sqlite3", "zmq", "pyphase.sandbox", "pyphase.history"}, env) == []


def test_submit_loads_neither_asyncio_nor_socks() -> None:
    """The client parses socket-monitor events itself (zmq.utils.monitor imports zmq.asyncio) and loads python-socks
    only for a proxy or a relayed peer."""
    code = "from pyphase.cli import build_parser\nbuild_parser('submit')\nimport pyphase.net.client"
    assert loaded_by(code, NEVER | {"sqlite3", "pyphase.sandbox"}) == []


def test_import_pyphase_loads_the_errors_alone() -> None:
    assert loaded_by("import pyphase", {"pyphase.runtime", "pyphase.identity", "nacl", "pyphase._core"}) == []
    assert loaded_by("from pyphase import Limits, run, Identity", {"nacl"}) == []  # a key is made only when asked


def test_every_command_is_in_the_table_and_in_the_help() -> None:
    full = pyphase.cli.build_parser()
    (sub,) = [a for a in full._actions if a.dest == "command"]
    assert set(sub.choices) == set(pyphase.cli.COMMAND_MODULES)
    for command, group in pyphase.cli.COMMAND_MODULES.items():
        (alone,) = [a for a in pyphase.cli.build_parser(command)._actions if a.dest == "command"]
        added = {c for c, g in pyphase.cli.COMMAND_MODULES.items() if g == group}
        assert set(alone.choices) == added, command
    text = subprocess.run(
        [sys.executable, "-m", "pyphase", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    for command in pyphase.cli.COMMAND_MODULES:
        assert f"\n    {command} " in text or f"\n    {command}\n" in text, command


@pytest.mark.parametrize("argv", [[], ["--version"], ["nonsense"]])
def test_the_whole_parser_answers_what_names_no_command(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "pyphase", *argv], capture_output=True, text=True, timeout=60)
    if argv == ["--version"]:
        assert out.returncode == 0 and out.stdout.startswith("phase 0.") and "wasm3" in out.stdout
    else:
        assert out.returncode == 2
        listed = out.stdout + out.stderr
        assert all(command in listed for command in pyphase.cli.COMMAND_MODULES)


def test_ed25519_sizes_are_libsodiums() -> None:
    import nacl.bindings

    from pyphase import identity

    assert identity.PUBLIC_KEY_BYTES == nacl.bindings.crypto_sign_PUBLICKEYBYTES
    assert identity.SEED_BYTES == nacl.bindings.crypto_sign_SEEDBYTES


def test_the_executable_leaves_the_collector_on_for_the_command() -> None:
    """console() turns collection off only while it reads the command line: a long submit still collects."""
    code = (
        "import gc, sys\nimport pyphase.cli.local as local\n"
        "local.cmd_id = lambda args: print('ENABLED', gc.isenabled()) or 0\n"
        "sys.argv = ['phase', 'id']\nfrom pyphase.cli import console\nconsole()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "ENABLED True"), out.stderr
