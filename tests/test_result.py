"""Result: what the C core's tuple becomes (Result.from_core sets the fields past the dataclass's __init__)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

import pyphase
from pyphase.digests import hash_text
from pyphase.result import Result


def _raw() -> tuple:
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    return ("trap", 3, "unreachable", b"out", b"err", 41, 7, 65536, *digests, True, 12, "files")


def test_from_core_sets_every_field_as_the_constructor_would():
    raw = _raw()
    made = Result.from_core(raw, "wasmtime")
    assert set(vars(made)) == {f.name for f in dataclasses.fields(Result)}
    built = Result(
        status="trap",
        exit_code=3,
        message="unreachable",
        stdout=b"out",
        stderr=b"err",
        fuel_used=41,
        wall_us=7,
        memory_peak_bytes=65536,
        module_hash=hash_text(raw[8]),
        input_hash=hash_text(raw[9]),
        stdout_hash=hash_text(raw[10]),
        stderr_hash=hash_text(raw[11]),
        fs_unavailable=True,
        engine="wasmtime",
        compile_us=12,
        fs_limit="files",
    )
    assert made == built and hash(made) == hash(built)
    assert [getattr(made, f.name) for f in dataclasses.fields(Result)] == [
        getattr(built, f.name) for f in dataclasses.fields(Result)
    ]
    assert dataclasses.replace(made, status="ok").status == "ok" and made.status == "trap"
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.status = "ok"  # type: ignore[misc]


def test_a_job_result_is_complete(hello_bytes):
    r = pyphase.run(hello_bytes, b"ab")
    assert (r.status, r.stdout, r.receipt, r.engine, r.fs_limit) == ("ok", b"ba", None, "wasm3", "")
    assert r.stdout_hash == hash_text(hashlib.sha256(b"ba").digest())
