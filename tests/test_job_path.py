"""One job path: a job is prepared once, and the same PreparedJob runs in this process and in a sandbox worker;
a digest the caller has travels with the bytes; ``phase run`` never validates the module in its own process."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import pytest

from pyphase import Sandbox
from pyphase.cli import main as phase_main
from pyphase.runtime import Module, prepare_job, run_prepared

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm"


def test_prepared_job_keeps_the_digest_it_is_given():
    data = HELLO.read_bytes()
    assert prepare_job(data).digest == hashlib.sha256(data).digest()
    given = bytes(range(32))
    assert prepare_job(data, digest=given).digest == given  # trusted: computed once by the caller
    module = Module(data)
    assert prepare_job(module).digest == module.digest


def test_one_prepared_job_runs_alike_in_process_and_in_a_worker():
    job = prepare_job(HELLO.read_bytes(), b"abc", args=["x"], env={"K": "V"}, deterministic=True)
    here = run_prepared(job)
    with Sandbox(workers=1) as sandbox:
        there = sandbox.run_prepared(job)
    assert here.stdout == there.stdout == b"cba"
    assert (here.module_hash, here.input_hash, here.stdout_hash) == (
        there.module_hash,
        there.input_hash,
        there.stdout_hash,
    )


def test_prepare_job_refuses_what_c_cannot_carry():
    with pytest.raises(ValueError, match="NUL"):
        prepare_job(HELLO.read_bytes(), args=["a\0b"])
    with pytest.raises(ValueError, match="environment variable names"):
        prepare_job(HELLO.read_bytes(), env={"A=B": "c"})


def test_phase_run_validates_the_module_in_the_worker_only(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PHASE_HOME", str(tmp_path))
    monkeypatch.setattr(Module, "_cache", OrderedDict())
    assert phase_main(["run", str(HELLO), "--input", "Hello"]) == 0
    assert capsys.readouterr().out == "olleH"
    assert len(Module._cache) == 0  # nothing was validated (or cached) in this process
    assert phase_main(["run", str(HELLO), "--input", "Hello", "--no-sandbox"]) == 0
    assert len(Module._cache) == 1  # --no-sandbox: validated here, as asked
