"""The phase CLI as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"


def phase(*args: str, input: bytes | None = None, home=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PHASE_HOME": str(home)} if home else None
    return subprocess.run(
        [sys.executable, "-m", "pyphase", *args], input=input, capture_output=True, timeout=120, cwd=ROOT, env=env
    )


@pytest.mark.parametrize("isolation", [[], ["--no-sandbox"]])
def test_run_hello_prints_reversed(tmp_path, isolation):
    p = phase("run", str(HELLO), "--input", "Hello, World", *isolation, home=tmp_path)
    assert (p.returncode, p.stdout) == (0, b"dlroW ,olleH"), p.stderr


def test_run_receipt_then_verify_and_tamper(tmp_path):
    receipt = tmp_path / "r.json"
    p = phase("run", str(HELLO), "--input", "Hello, World", "--receipt", str(receipt), home=tmp_path)
    assert p.returncode == 0, p.stderr
    ok = phase("verify", str(receipt), "--module", str(HELLO), "--input-text", "Hello, World", home=tmp_path)
    assert ok.returncode == 0 and b"receipt OK" in ok.stdout
    doc = json.loads(receipt.read_text())
    doc["exit_code"] = 1
    receipt.write_text(json.dumps(doc))
    bad = phase("verify", str(receipt), home=tmp_path)
    assert bad.returncode == 1 and b"signature" in bad.stderr


def test_verify_names_the_mismatching_file(tmp_path):
    receipt = tmp_path / "r.json"
    assert phase("run", str(HELLO), "--input", "abc", "--receipt", str(receipt), home=tmp_path).returncode == 0
    (tmp_path / "out").write_bytes(b"not cba")
    p = phase("verify", str(receipt), "--stdout", str(tmp_path / "out"), home=tmp_path)
    assert p.returncode == 1 and b"stdout hash" in p.stderr


def test_stdin_and_json(tmp_path):
    p = phase("run", str(HELLO), "--stdin", "--json", input=b"xyz\n", home=tmp_path)
    doc = json.loads(p.stdout)
    assert doc["stdout"] == "zyx" and doc["status"] == "ok" and doc["receipt"]["signature"]


def test_exit_codes_follow_status(tmp_path, probe_bytes):
    mod = tmp_path / "probe.wasm"
    mod.write_bytes(probe_bytes)
    assert phase("run", str(mod), "--arg", "exit", "--arg", "3", home=tmp_path).returncode == 3
    t = phase("run", str(mod), "--arg", "spin", "--timeout", "300ms", home=tmp_path)
    assert t.returncode == 124 and b"timeout" in t.stderr
    f = phase("run", str(mod), "--arg", "spin", "--fuel", "1000", home=tmp_path)
    assert f.returncode == 152 and b"fuel_exhausted" in f.stderr


def test_invalid_module_and_usage_errors(tmp_path):
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0\x01\xff")
    p = phase("run", str(bad), home=tmp_path)
    assert p.returncode == 65 and b"invalid_module" in p.stderr
    assert phase("run", str(tmp_path / "missing.wasm"), home=tmp_path).returncode == 2
    assert phase("run", str(HELLO), "--memory", "lots", home=tmp_path).returncode == 2


def test_keygen_writes_0600(tmp_path):
    p = phase("keygen", "--out", str(tmp_path / "id.key"), home=tmp_path)
    assert p.returncode == 0 and len(p.stdout.strip()) == 52
    assert oct(os.stat(tmp_path / "id.key").st_mode & 0o777) == "0o600"
    assert phase("keygen", "--out", str(tmp_path / "id.key"), home=tmp_path).returncode == 2


def test_help_explains():
    p = phase("run", "--help")
    assert p.returncode == 0 and b"--timeout" in p.stdout and b"exit status" in p.stdout


@pytest.mark.parametrize(
    "name, data, says",
    [
        ("job.wat", b"(module)\n", ["WebAssembly text", "wat2wasm job.wat -o job.wasm"]),
        ("prog.c", b"#include <stdio.h>\nint main(void) { return 0; }\n", ["C source", "-o prog.wasm prog.c"]),
        ("empty.wasm", b"", ["empty", "wasm32-wasi", "-o job.wasm job.c"]),  # not "-o empty.wasm empty.wasm"
    ],
)
def test_not_a_module_says_what_to_do(tmp_path, name, data, says):
    path = tmp_path / name
    path.write_bytes(data)
    p = phase("run", str(path), home=tmp_path)
    assert p.returncode == 65, p.stderr
    err = p.stderr.decode()
    assert all(s in err for s in says) and "magic header" not in err, err


def test_bare_numbers_and_ambiguous_units_are_refused_with_the_choices(tmp_path):
    for flag, value, says in (
        ("--memory", "64", "64MiB"),
        ("--memory", "64M", "64MB (64,000,000 bytes)"),
        ("--timeout", "5", "5s"),
        ("--output-limit", "1k", "1KiB"),
    ):
        p = phase("run", str(HELLO), flag, value, home=tmp_path)
        assert p.returncode == 2 and flag in p.stderr.decode() and says in p.stderr.decode(), (flag, p.stderr)


def test_applied_limits_are_echoed_when_not_what_was_typed(tmp_path):
    p = phase("run", str(HELLO), "--input", "ab", "--memory", "64MB", "--timeout", "0", "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    err = p.stderr.decode()
    assert "--memory 64MB is 64,000,000 bytes" in err and "976 pages (61 MiB)" in err, err
    assert "--timeout 0: no wall-clock limit" in err, err
    doc = json.loads(p.stdout)
    assert doc["receipt"]["limits"]["memory_bytes"] == 64_000_000
    quiet = phase("run", str(HELLO), "--memory", "64MiB", "--timeout", "2s", home=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == b"", quiet.stderr


def test_keygen_names_force_and_refuses_a_missing_directory(tmp_path):
    key = tmp_path / "id.key"
    assert phase("keygen", "--out", str(key), home=tmp_path).returncode == 0
    again = phase("keygen", "--out", str(key), home=tmp_path)
    assert again.returncode == 2 and b"--force" in again.stderr and b"overwrite" not in again.stderr, again.stderr
    nowhere = tmp_path / "no" / "such" / "dir" / "k.key"
    p = phase("keygen", "--out", str(nowhere), home=tmp_path)
    assert p.returncode == 2 and b"does not exist" in p.stderr, p.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", ["run", "submit"])
def test_help_explains_units_timeouts_and_exit_codes(command):
    out = phase(command, "--help").stdout.decode()
    for needed in ("KiB", "MB", "powers of 1024", "--timeout 0", "no limit", "exit status", "124", "65"):
        assert needed in out, (needed, out)


def test_a_placeholder_peer_address_says_where_the_real_one_is(tmp_path):
    for peer, says in (("PEERID@127.0.0.1:7070", "DATA_DIR/address"), ("127.0.0.1:7070", "DATA_DIR/address")):
        p = phase("submit", str(HELLO), "--peer", peer, home=tmp_path)
        assert p.returncode == 2 and says.encode() in p.stderr, p.stderr


def test_run_applies_a_users_local_defaults_and_submit_a_nodes(tmp_path):
    # phase run on one's own machine: no wall-clock limit, wasm32's whole memory, no output cap below the most a
    # job can produce; the receipt says what was applied
    p = phase("run", str(HELLO), "--input", "ab", "--json", home=tmp_path)
    applied = json.loads(p.stdout)["receipt"]["limits"]
    assert applied == {"memory_bytes": 4 << 30, "fuel": 0, "timeout_ms": 0, "output_bytes": 1 << 30}
    given = phase("run", str(HELLO), "--json", "--timeout", "2s", "--memory", "1MiB", "--output-limit", "1KiB")
    assert json.loads(given.stdout)["receipt"]["limits"] == {
        "memory_bytes": 1 << 20,
        "fuel": 0,
        "timeout_ms": 2000,
        "output_bytes": 1024,
    }
    run_help, submit_help = (" ".join(phase(c, "--help").stdout.decode().split()) for c in ("run", "submit"))
    assert "no limit (default none)" in run_help and "(default 4 GiB" in run_help
    assert "(default 10s)" in submit_help and "(default 64 MiB)" in submit_help and "(default 1 MiB)" in submit_help
