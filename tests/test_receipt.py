"""Receipts: signing over canonical JSON, and every way verification must fail."""

from __future__ import annotations

import base64
import copy
import json
import os
import stat

import pytest

import pyphase
from pyphase import Identity, Limits, VerificationError, make_manifest, make_receipt, verify_receipt
from pyphase.identity import peer_id_from_public_key, public_key_from_peer_id
from pyphase.manifest import job_id, validate_manifest
from pyphase.signing import canonical_bytes

INPUT = b"Hello, World"


@pytest.fixture(scope="module")
def signed(hello_bytes):
    identity = Identity.generate()
    result = pyphase.run(hello_bytes, INPUT)
    manifest = make_manifest(hello_bytes, INPUT)
    receipt = make_receipt(result, job_id=job_id(manifest), nonce=manifest["nonce"], limits=Limits(), identity=identity)
    return identity, result, manifest, receipt


def test_good_receipt_verifies_everything(signed, hello_bytes):
    identity, result, manifest, receipt = signed
    out = verify_receipt(
        receipt,
        module=hello_bytes,
        input=INPUT,
        stdout=result.stdout,
        stderr=result.stderr,
        nonce=manifest["nonce"],
        signer=identity.peer_id,
        manifest=manifest,
    )
    assert out["status"] == "ok" and out["stdout"] == result.stdout_hash


def _flip(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        if value.startswith("sha256:"):
            return value[:-1] + ("0" if value[-1] != "0" else "1")
        return value + "x"
    if isinstance(value, dict):
        key = sorted(value)[0]
        return {**value, key: _flip(value[key])}
    raise AssertionError(type(value))


@pytest.mark.parametrize(
    "field",
    [
        "version",
        "job_id",
        "nonce",
        "module",
        "input",
        "stdout",
        "stderr",
        "exit_code",
        "status",
        "message",
        "fuel_used",
        "wall_us",
        "started_at",
        "limits",
        "node",
    ],
)
def test_any_changed_field_breaks_the_signature(signed, field):
    receipt = copy.deepcopy(signed[3])
    receipt[field] = _flip(receipt[field]) if field != "status" else "trap"
    with pytest.raises(VerificationError) as info:
        verify_receipt(receipt)
    assert info.value.problems


def test_flipped_signature_byte(signed):
    receipt = copy.deepcopy(signed[3])
    sig = bytearray(base64.b64decode(receipt["signature"]))
    sig[10] ^= 1
    receipt["signature"] = base64.b64encode(sig).decode()
    with pytest.raises(VerificationError, match="signature"):
        verify_receipt(receipt)


def test_signature_spelled_with_unused_bits_set_is_refused(signed):
    # 64 bytes are 86 base64 characters and "==": the last character carries 4 bits nobody reads. Setting one
    # keeps the bytes (a lenient decoder accepts them) but changes the document; C's verifier refuses it, so must we.
    receipt = copy.deepcopy(signed[3])
    text = receipt["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    receipt["signature"] = text[:85] + alphabet[alphabet.index(text[85]) ^ 1] + text[86:]
    assert base64.b64decode(receipt["signature"]) == base64.b64decode(text)
    with pytest.raises(VerificationError, match="canonical base64"):
        verify_receipt(receipt)


def test_missing_signature(signed):
    receipt = copy.deepcopy(signed[3])
    del receipt["signature"]
    with pytest.raises(VerificationError, match="signature"):
        verify_receipt(receipt)


def test_wrong_key_resigned_by_someone_else(signed):
    from pyphase.signing import sign_document

    _, _, _, receipt = signed
    mallory = Identity.generate()
    forged = sign_document(receipt, mallory.signing_key)  # claims the original node
    with pytest.raises(VerificationError, match="signature"):
        verify_receipt(forged)


def test_swapped_node_key_is_not_the_expected_signer(signed, hello_bytes):
    identity, result, manifest, _ = signed
    other = Identity.generate()
    receipt = make_receipt(result, job_id=job_id(manifest), nonce=manifest["nonce"], limits=Limits(), identity=other)
    verify_receipt(receipt)  # self-consistent ...
    with pytest.raises(VerificationError, match="expected"):
        verify_receipt(receipt, signer=identity.peer_id)  # ... but not from the peer we talked to


def test_wrong_nonce(signed):
    with pytest.raises(VerificationError, match="nonce"):
        verify_receipt(signed[3], nonce="00" * 16)


@pytest.mark.parametrize("which", ["module", "input", "stdout", "stderr"])
def test_bytes_that_do_not_match(signed, which):
    with pytest.raises(VerificationError, match=which):
        verify_receipt(signed[3], **{which: b"something else"})


def test_every_problem_is_reported(signed):
    receipt = copy.deepcopy(signed[3])
    receipt["exit_code"] = 9
    with pytest.raises(VerificationError) as info:
        verify_receipt(receipt, nonce="11" * 16, stdout=b"x")
    text = " | ".join(info.value.problems)
    assert "signature" in text and "nonce" in text and "stdout" in text


def test_not_an_object():
    with pytest.raises(VerificationError):
        verify_receipt(["not", "a", "receipt"])


def test_canonical_bytes_are_sorted_compact_and_refuse_floats():
    assert canonical_bytes({"b": 1, "a": "é", "signature": "x"}) == '{"a":"é","b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_bytes({"a": 1.5})


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"a": {"b": [1, 2, {"c": 2.0}]}}, r"\$\.a\.b\[2\]\.c: floats"),
        ({"a": [True, None, "x", (1, b"raw")]}, r"\$\.a\[3\]\[1\]: bytes cannot appear"),
        ({"a": {"ok": 1, 7: "key"}}, r"\$\.a: object keys must be strings"),
        ({"a": {1.5}}, r"\$\.a: set cannot appear"),
    ],
)
def test_canonical_bytes_name_where_a_document_cannot_be_signed(document, where):
    with pytest.raises(ValueError, match=where):
        canonical_bytes(document)


def test_a_document_that_contains_itself_is_refused_not_walked_forever():
    loop: dict[str, object] = {"a": 1}
    loop["self"] = [loop]
    with pytest.raises(RecursionError):
        canonical_bytes(loop)


def test_manifest_schema_rejects_bad_documents(hello_bytes):
    manifest = make_manifest(hello_bytes, b"")
    for mutate in (
        lambda m: m.pop("nonce"),
        lambda m: m.update(version=2),
        lambda m: m["limits"].update(fuel=-1),
        lambda m: m.update(extra=1),
        lambda m: m["module"].update(hash="md5:00"),
    ):
        bad = copy.deepcopy(manifest)
        mutate(bad)
        with pytest.raises(pyphase.ManifestError):
            validate_manifest(bad)


def test_identity_round_trip_and_file_mode(tmp_path):
    identity = Identity.generate()
    path = identity.save(tmp_path / "k" / "id.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load(path).public_key == identity.public_key
    assert public_key_from_peer_id(identity.peer_id) == identity.public_key
    assert peer_id_from_public_key(identity.public_key) == identity.peer_id
    os.chmod(path, 0o644)
    with pytest.raises(pyphase.IdentityError, match="readable by others"):
        Identity.load(path)
    with pytest.raises(pyphase.IdentityError, match="already exists"):
        identity.save(path)


def test_curve_keys_are_derived_from_the_identity():
    import nacl.bindings

    identity = Identity.generate()
    public, secret = identity.curve_keypair()
    assert nacl.bindings.crypto_scalarmult_base(secret) == public


def test_receipt_is_json_serialisable(signed):
    assert json.loads(json.dumps(signed[3])) == signed[3]
