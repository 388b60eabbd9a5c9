"""The static C verifier (csrc/boot) against Python-signed manifests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyphase.boot.manifest import Artifact, encode_manifest, make_boot_manifest, sign_manifest
from pyphase.identity import Identity
from pyphase.signing import canonical_bytes

from .conftest import run_tool


def _signed(key: Identity, tmp_path: Path, **over: object) -> Path:
    kernel = tmp_path / "kernel"
    initrd = tmp_path / "initrd"
    kernel.write_bytes(b"K" * 3000)
    initrd.write_bytes(b"I" * 5000)
    now = int(time.time())
    doc = make_boot_manifest(
        Artifact.of_file(kernel),
        Artifact.of_file(initrd),
        'console=ttyS0 quiet x="a b\\c"',
        release=5,
        expires_at=now + 3600,
        created_at=now,
    )
    doc.update(over)
    path = tmp_path / "manifest.json"
    path.write_bytes(encode_manifest(sign_manifest(doc, key.signing_key)))
    return path


def test_python_signed_manifest_verifies_in_c(phase_boot_bin: Path, release_key, tmp_path: Path) -> None:
    key, pub = release_key
    manifest = _signed(key, tmp_path)
    out = tmp_path / "fields"
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, "--out", out, manifest)
    assert r.returncode == 0, r.stderr
    assert "manifest ok: release 5" in r.stdout
    assert (out / "cmdline").read_text() == 'console=ttyS0 quiet x="a b\\c"\n'
    assert (out / "kernel.size").read_text() == "3000\n"
    assert (out / "kernel.hash").read_text().strip() == Artifact.of_file(tmp_path / "kernel").hash


def _tamper(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    if isinstance(value, dict):
        return {**value, "size": value["size"] + 1}
    raise AssertionError(value)


@pytest.mark.parametrize(
    "field",
    ["type", "version", "release", "arch", "created_at", "expires_at", "kernel", "initramfs", "cmdline", "signature"],
)
def test_tampering_any_field_fails_in_c(phase_boot_bin: Path, release_key, tmp_path: Path, field: str) -> None:
    key, pub = release_key
    manifest = _signed(key, tmp_path)
    doc = json.loads(manifest.read_text())
    doc[field] = _tamper(doc[field])
    manifest.write_text(json.dumps(doc))
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, manifest)
    assert r.returncode == 1
    assert "manifest refused: bad signature" in r.stderr


def test_added_field_and_hash_case_fail_in_c(phase_boot_bin: Path, release_key, tmp_path: Path) -> None:
    key, pub = release_key
    doc = json.loads(_signed(key, tmp_path).read_text())
    for mutate in (
        lambda d: d.__setitem__("extra", 1),
        lambda d: d["kernel"].__setitem__("hash", d["kernel"]["hash"].upper().replace("SHA256", "sha256")),
    ):
        copy = json.loads(json.dumps(doc))
        mutate(copy)
        (tmp_path / "m2.json").write_text(json.dumps(copy))
        r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, tmp_path / "m2.json")
        assert r.returncode == 1 and "bad signature" in r.stderr


def test_whitespace_and_key_order_do_not_matter(phase_boot_bin: Path, release_key, tmp_path: Path) -> None:
    key, pub = release_key
    doc = json.loads(_signed(key, tmp_path).read_text())
    reordered = dict(reversed(list(doc.items())))
    (tmp_path / "m3.json").write_text(json.dumps(reordered, indent=7))
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, tmp_path / "m3.json")
    assert r.returncode == 0, r.stderr


def test_wrong_key_expired_and_rollback_in_c(phase_boot_bin: Path, release_key, tmp_path: Path) -> None:
    key, pub = release_key
    other = Identity.generate()
    manifest = _signed(other, tmp_path)
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, manifest)
    assert r.returncode == 1 and "does not verify against the release key" in r.stderr

    now = int(time.time())
    manifest = _signed(key, tmp_path, created_at=now - 7200, expires_at=now - 3600)
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, manifest)
    assert r.returncode == 1 and "expired" in r.stderr
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, "--now", str(now - 4000), manifest)
    assert r.returncode == 0, r.stderr

    manifest = _signed(key, tmp_path)
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, "--min-release", "6", manifest)
    assert r.returncode == 1 and "rollback" in r.stderr


def test_malformed_inputs_are_refused_not_crashed(phase_boot_bin: Path, release_key, tmp_path: Path) -> None:
    _, pub = release_key
    cases = [
        b"",
        b"[]",
        b"{",
        b'{"signature": 5}',
        b'{"signature": "!!!"}',
        b"\xff\xfe",
        b'{"a": 1.5}',
        b'{"a":1,"a":2}',
        b"{" * 100000,
        b'{"signature":"' + b"A" * 88 + b'"}',
    ]
    for i, data in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_bytes(data)
        r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, path)
        assert r.returncode == 1, (data[:40], r.stderr)
        assert "phase-verify: manifest" in r.stderr


def test_bad_public_key_is_a_usage_error(phase_boot_bin: Path, release_key, tmp_path: Path) -> None:
    key, _ = release_key
    manifest = _signed(key, tmp_path)
    bad = tmp_path / "bad.pub"
    bad.write_text("phase-ed25519-public-v1:AAAA\n")
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", bad, manifest)
    assert r.returncode == 2 and "malformed public key" in r.stderr


def test_file_hash_check(phase_boot_bin: Path, tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"x" * 70000)
    a = Artifact.of_file(f)
    ok = run_tool(phase_boot_bin / "phase-verify", "file", "--hash", a.hash, "--size", str(a.size), f)
    assert ok.returncode == 0, ok.stderr
    f.write_bytes(b"x" * 69999 + b"y")
    bad = run_tool(phase_boot_bin / "phase-verify", "file", "--hash", a.hash, "--size", str(a.size), f)
    assert bad.returncode == 1 and "hash mismatch" in bad.stderr
    short = run_tool(phase_boot_bin / "phase-verify", "file", "--hash", a.hash, "--size", str(a.size + 1), f)
    assert short.returncode == 1 and "size mismatch" in short.stderr


# Canonical bytes: the C emitter must match pyphase.signing.canonical_bytes on any JSON Python accepts.
_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(_text, _json, max_size=6), ascii_out=st.booleans())
def test_canonical_bytes_match_python(phase_boot_bin: Path, tmp_path: Path, doc: dict, ascii_out: bool) -> None:
    path = tmp_path / "doc.json"
    # The file may be written any way (escaped or raw UTF-8); canonical bytes must not care.
    path.write_bytes(json.dumps(doc, ensure_ascii=ascii_out, indent=1).encode())
    r = __import__("subprocess").run(
        [str(phase_boot_bin / "phase-verify"), "canon", str(path)], capture_output=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == canonical_bytes(doc)


def test_canonical_escapes_match_python(phase_boot_bin: Path, tmp_path: Path) -> None:
    doc = {
        "s": "".join(chr(c) for c in range(1, 0x80)) + "é\u2028\U0001f600",
        "signature": "dropped",
        "k\u00e9y": [True, False, None, -0, 9223372036854775807],
    }
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    r = __import__("subprocess").run([str(phase_boot_bin / "phase-verify"), "canon", str(path)], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == canonical_bytes(doc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifests_c_and_python_agree(phase_boot_bin: Path, tmp_path: Path, data: st.DataObject) -> None:
    """Flip, insert or delete bytes of a signed manifest: the C verifier never crashes, and it
    accepts exactly when the Python verifier accepts (so neither is laxer than the other)."""
    from pyphase.boot import keys
    from pyphase.boot.errors import BootError
    from pyphase.boot.manifest import decode_manifest, verify_manifest

    key = Identity.from_seed(b"\x01" * 32)
    pub = tmp_path / "k.pub"
    pub.write_text(keys.public_key_text(key.public_key))
    raw = bytearray(_signed(key, tmp_path).read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            raw.insert(pos, data.draw(st.sampled_from(b' \n{}[]",:0123456789abcdef\\u')))
        else:
            del raw[pos]
    path = tmp_path / "mutated.json"
    path.write_bytes(bytes(raw))
    r = run_tool(phase_boot_bin / "phase-verify", "manifest", "--key", pub, path)
    assert r.returncode in (0, 1), r.stderr  # never a crash (negative = killed by a signal)
    try:
        verify_manifest(decode_manifest(bytes(raw)), key.public_key)
        python_ok = True
    except (BootError, ValueError):
        python_ok = False
    assert (r.returncode == 0) == python_ok, (bytes(raw), r.stderr)


@pytest.mark.parametrize(
    "dht", ["10.0.2.2:6881 init=/bin/sh", "a:1;reboot", 'x:1"', "a:1\nb:2", "", "x" * 513, "é.test:1"]
)
def test_kexec_refuses_a_dht_list_that_could_add_to_the_command_line(
    phase_boot_bin: Path, release_key, tmp_path: Path, dht: str
) -> None:
    """--dht becomes phase.dht= on stage 2's command line: only "off" or HOST:PORT items of a fixed alphabet
    pass, so nothing else (init=, quotes, spaces) can ride on it. Refused before anything is loaded."""
    identity, pub = release_key
    manifest = _signed(identity, tmp_path)
    r = run_tool(phase_boot_bin / "phase-verify", "kexec", "--key", pub, "--manifest", manifest,
                 "--kernel", tmp_path / "kernel", "--initrd", tmp_path / "initrd", "--dht", dht)  # fmt: skip
    assert r.returncode == 2 and "--dht must be off or HOST:PORT" in r.stderr, r.stderr


def test_kexec_refuses_a_release_for_another_architecture(phase_boot_bin: Path, release_key, tmp_path: Path) -> None:
    """A validly signed aarch64 release is never loaded on x86_64 (and the other way round: the arm64 test)."""
    identity, pub = release_key
    manifest = _signed(identity, tmp_path, arch="aarch64")
    r = run_tool(phase_boot_bin / "phase-verify", "kexec", "--key", pub, "--manifest", manifest,
                 "--kernel", tmp_path / "kernel", "--initrd", tmp_path / "initrd")  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "arch: the manifest is for aarch64, this machine is x86_64" in r.stderr, r.stderr
