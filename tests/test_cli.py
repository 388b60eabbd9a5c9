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
    return subprocess.run([sys.executable, "-m", "pyphase", *args], input=input, capture_output=True, timeout=120,
                          cwd=ROOT, env=env)


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
