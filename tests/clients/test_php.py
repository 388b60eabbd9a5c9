"""The PHP SDK (clients/php): its PHPUnit suite against real plasmd nodes, and Python <-> PHP interoperability.

PHP, php-zmq, php-msgpack and phpunit come from Debian (``.ci/setup --test``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import wasm_build

from pyphase import Identity, Limits, make_manifest, make_receipt, run, verify_receipt
from pyphase.errors import VerificationError
from pyphase.manifest import job_id, validate_manifest
from pyphase.runtime import Module
from pyphase.signing import canonical_bytes

ROOT = Path(__file__).resolve().parents[2]
PHP_DIR = ROOT / "clients" / "php"
PHASE_PHP = PHP_DIR / "bin" / "phase-php"
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

pytestmark = pytest.mark.skipif(
    shutil.which("php") is None or shutil.which("phpunit") is None,
    reason="needs PHP: apt-get install php-cli php-zmq php-msgpack phpunit (.ci/setup --test)",
)


def php(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["php", str(PHASE_PHP), *map(str, args)], capture_output=True, text=True, timeout=60, check=check
    )


def test_phpunit_suite_passes_against_real_nodes(tmp_path: Path) -> None:
    """Job, cached module, a killed node (between jobs, mid-job), tampered receipt, wrong signer, the demo output."""
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        ["phpunit", "-c", str(PHP_DIR / "phpunit.xml.dist"), "--log-junit", str(junit)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=PHP_DIR,
        env={
            **os.environ,
            "PHASE_PYTHON": sys.executable,
            "TMPDIR": str(tmp_path),
            "PHASE_DRIP_WASM": str(wasm_build.build_c("drip.c")),
        },
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    ran = {case.get("name") for case in suite.iter("testcase")}
    for name in (
        "testJobRunsAndItsReceiptVerifies",
        "testModuleIsSentOnceThenCached",
        "testFailoverAfterTheServingNodeIsKilled",
        "testANodeKilledMidJobIsNoticedAtOnceNotAtTheJobTimeout",
        "testTamperedReceiptIsRefused",
        "testWrongSignerIsRefused",
        "testRemoteDemo",
        "testLocalDemo",
        "testJobHereThroughTheApi",
        "testOutputStreamsAsTheJobRuns",
        "testTamperedChunkIsCaughtAfterTheOutputAndSaidLoudly",
        "testOutputStreamsThroughTheApi",
        "testLocalTransportHandsTheVerifiedOutputToTheCallback",
        "testJobSentToAnotherNodeThroughTheApi",
    ):
        assert name in ran
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "0", "0")


def test_python_receipt_verifies_in_php(tmp_path: Path, hello_bytes: bytes) -> None:
    node = Identity.generate()
    manifest = make_manifest(hello_bytes, b"Hello, World")
    result = run(Module(hello_bytes), b"Hello, World")
    receipt = make_receipt(result, job_id=job_id(manifest), nonce=manifest["nonce"], limits=Limits(), identity=node)
    (tmp_path / "r.json").write_text(json.dumps(receipt))
    (tmp_path / "out").write_bytes(result.stdout)
    (tmp_path / "in").write_bytes(b"Hello, World")
    ok = php(
        "verify",
        tmp_path / "r.json",
        "--signer",
        node.peer_id,
        "--nonce",
        manifest["nonce"],
        "--stdout",
        tmp_path / "out",
        "--input",
        tmp_path / "in",
        "--module",
        HELLO,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"receipt OK: ok exit 0, signed by {node.peer_id}\n"
    other = php("verify", tmp_path / "r.json", "--signer", Identity.generate().peer_id)
    assert other.returncode == 1 and f"signed by {node.peer_id}, expected" in other.stderr
    receipt["wall_us"] += 1
    (tmp_path / "t.json").write_text(json.dumps(receipt))
    tampered = php("verify", tmp_path / "t.json")
    assert tampered.returncode == 1 and "signature does not match the document and key" in tampered.stderr


def test_php_receipt_verifies_in_python(tmp_path: Path) -> None:
    seed = bytes(range(32))
    node = Identity.from_seed(seed)
    body = {
        "version": 1,
        "job_id": "sha256:" + "1" * 64,
        "nonce": "ab" * 16,
        "module": "sha256:" + "2" * 64,
        "input": "sha256:" + "3" * 64,
        "stdout": "sha256:" + "4" * 64,
        "stderr": "sha256:" + "5" * 64,
        "exit_code": -7,
        "status": "trap",
        "message": 'unreachable ü "/\\\n\u2028 executed',
        "fuel_used": 1 << 40,
        "wall_us": 0,
        "started_at": "2026-11-30T04:00:00.123Z",
        "limits": Limits().to_json(),
        "node": {
            "peer_id": node.peer_id,
            "public_key": base64.b64encode(node.public_key).decode(),
            "runtime": "wasm3",
            "runtime_version": "0.5.0",
            "arch": "x86_64",
        },
    }
    (tmp_path / "body.json").write_text(json.dumps(body))
    signed = json.loads(php("sign", tmp_path / "body.json", seed.hex(), check=True).stdout)
    assert verify_receipt(signed, signer=node.peer_id, nonce="ab" * 16) == signed
    signed["message"] = "something else"
    with pytest.raises(VerificationError, match="signature"):
        verify_receipt(signed)


def test_php_manifest_is_valid_and_names_the_same_job(tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"\x00\xffbinary input")
    out = json.loads(php("manifest", HELLO, tmp_path / "in", check=True).stdout)
    manifest = validate_manifest(out["manifest"])
    assert manifest["env"] == {"K": "v/1", "EMPTY": ""} and manifest["requires"] == {}
    assert manifest["input"]["size"] == 14
    assert job_id(manifest) == out["job_id"]


def test_canonical_bytes_agree(tmp_path: Path) -> None:
    doc = {
        "z": [1, -2, True, None, {}],
        "a": {"é": 'tab\there \u0001 \u007f \u2028 / \\ "', "": []},
        "ü": {"b": 1, "B": 2, "a\u00ff": 3, "a\u0100": 4},
        "signature": "ignored",
    }
    (tmp_path / "doc.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "signature"}))
    assert php("canonical", tmp_path / "doc.json", check=True).stdout.encode() == canonical_bytes(doc)


def test_receipt_fields_added_since_verify_in_php(tmp_path: Path, hello_bytes: bytes) -> None:
    """A receipt of a job run by the compiling engine (node.runtime wasmtime, node.fuel_unit) with an output tree
    (outputs): PHP checks each field's shape and the signature over all of them; a changed one is refused."""
    node = Identity.generate()
    manifest = make_manifest(hello_bytes, b"abc")
    limits = Limits(fuel=10**9)  # metered: wasmtime counts fuel only under a fuel limit (fuel_unit none without)
    result = run(Module(hello_bytes), b"abc", engine="wasmtime", limits=limits)
    outputs = {"hash": "sha256:" + "6" * 64, "size": 42}
    receipt = make_receipt(
        result, job_id=job_id(manifest), nonce=manifest["nonce"], limits=limits, identity=node, outputs=outputs
    )
    assert receipt["node"]["runtime"] == "wasmtime" and receipt["node"]["fuel_unit"] == "wasmtime-fuel"
    assert receipt["outputs"] == outputs
    (tmp_path / "r.json").write_text(json.dumps(receipt))
    ok = php("verify", tmp_path / "r.json", "--signer", node.peer_id, "--nonce", manifest["nonce"])
    assert ok.returncode == 0, ok.stderr
    for path, value, says in (
        (("node", "fuel_unit"), "wasm3-ticks", "signature does not match"),
        (("outputs", "size"), 43, "signature does not match"),
        (("node", "fuel_unit"), 7, "$.node.fuel_unit: not a string"),
        (("outputs", "hash"), "md5:00", "$.outputs: must hold exactly hash"),
    ):
        bad = json.loads(json.dumps(receipt))
        bad[path[0]][path[1]] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        refused = php("verify", tmp_path / "bad.json")
        assert refused.returncode == 1 and says in refused.stderr, (path, refused.stderr)
