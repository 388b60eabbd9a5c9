"""The JSON Schemas' compiled validators (pyphase.schemas): generated once, then read from the user's cache by a
name made of everything they come from; a changed schema, a damaged file or another user's file means generating
them again, and the answers are the same either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyphase import schemas

GOOD = {"status": "ok"}  # incomplete: the validator must say what is missing, from cache or not


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    schemas._validator.cache_clear()
    yield tmp_path / "phase" / "schemas"
    schemas._validator.cache_clear()


def _no_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastjsonschema  # type: ignore[import-untyped]

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("generated again")

    monkeypatch.setattr(fastjsonschema, "compile_to_code", refuse)


def test_a_validator_is_generated_once_then_read_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = schemas.errors("receipt", GOOD)
    (kept,) = cache.glob("receipt-*.bin")
    assert kept.stat().st_mode & 0o777 == 0o600 and first and first[0].startswith("receipt")
    schemas._validator.cache_clear()
    _no_generator(monkeypatch)
    assert schemas.errors("receipt", GOOD) == first


@pytest.mark.parametrize("damage", ["garbage", "empty", "another user's"])
def test_a_bad_cache_file_is_not_used(cache: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    first = schemas.errors("manifest", GOOD)
    (kept,) = cache.glob("manifest-*.bin")
    if damage == "garbage":
        kept.write_bytes(os.urandom(200))
    elif damage == "empty":
        kept.write_bytes(b"")
    else:
        if os.getuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(kept, 1, 1)
    schemas._validator.cache_clear()
    assert schemas.errors("manifest", GOOD) == first
    assert kept.stat().st_uid == os.getuid()  # written again by this user


def test_a_changed_schema_has_another_cache_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schemas.errors("receipt", GOOD)
    before = schemas._cache_path("receipt")
    original = schemas._text
    monkeypatch.setattr(schemas, "_text", lambda name: original(name).replace('"status"', '"status" ', 1))
    assert schemas._cache_path("receipt") != before


@pytest.mark.parametrize("name", sorted(schemas.SCHEMA_FILES))
def test_the_kept_validator_answers_as_fastjsonschemas_own(cache: Path, name: str) -> None:
    import fastjsonschema

    reference = fastjsonschema.compile(schemas.load(name))
    for document in ({}, GOOD, [], {"version": "x"}, {"version": 1, "status": 7}):
        for validate in (reference, schemas._validator(name)):
            try:
                validate(document)
                said = "valid"
            except fastjsonschema.JsonSchemaValueException as exc:
                said = f"{exc.message} at {exc.path}"
            if validate is reference:
                expected = said
        assert said == expected, (name, document)


def test_a_float_where_an_integer_belongs_is_named_with_its_path(hello_bytes):
    from pyphase import make_manifest

    manifest = make_manifest(hello_bytes, b"")
    assert schemas.errors("manifest", manifest) == []
    manifest["limits"]["fuel"] = 1000.0  # JSON Schema calls it an integer
    assert schemas.errors("manifest", manifest) == ["manifest.limits.fuel: must be an integer, not a float"]
