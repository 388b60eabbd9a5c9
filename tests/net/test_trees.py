"""Remote jobs with directories (issue 13): input trees sent once, output trees returned and verified, and every
kind of bad tree refused on its own, by real ``plasmd`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from attackers import Conn
from pyphase import Client, Preopen, trees
from pyphase.digests import sha256_text
from pyphase.errors import NetworkError, TreeError
from pyphase.manifest import make_manifest
from pyphase.net import wire
from wasm_build import build_c

MiB = 1 << 20


@pytest.fixture(scope="module")
def tree_job() -> bytes:
    return build_c("tree_job.c").read_bytes()


def checksum(root: Path) -> tuple[int, int, str]:
    """What tree_job.c's ``read`` prints for ``root``: files, bytes, FNV-1a of each 64 KiB read's ends."""
    files, total, h = checksum_state(root, 1469598103934665603)
    return files, total, f"{h:016x}"


def checksum_state(root: Path, h: int) -> tuple[int, int, int]:
    files = total = 0
    for name in sorted(os.listdir(root)):
        path = root / name
        if path.is_symlink():
            continue
        if path.is_dir():
            f, b, h = checksum_state(path, h)
            files, total = files + f, total + b
            continue
        files += 1
        with open(path, "rb") as fh:
            while chunk := fh.read(65536):
                total += len(chunk)
                for byte in (chunk[0], chunk[-1]):
                    h = ((h ^ byte) * 1099511628211) % (1 << 64)
    return files, total, h


def make_tree(root: Path, total: int, files: int) -> Path:
    """``files`` files of random bytes, ``total`` bytes together, spread over a few nested directories."""
    root.mkdir(parents=True)
    each = total // files
    for i in range(files):
        sub = root / f"d{i % 3}" / f"e{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        size = each if i < files - 1 else total - each * (files - 1)
        (sub / f"f{i:03d}.bin").write_bytes(os.urandom(size))
    return root


def phase(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyphase", *args], capture_output=True, text=True, timeout=300, check=False
    )


# ---- the tree format ------------------------------------------------------------------------------------


def test_a_scanned_tree_parses_back_and_hashes_its_listing(tmp_path):
    root = make_tree(tmp_path / "t", 10_000, 5)
    (root / "d0" / "link").symlink_to("e0")
    tree, where = trees.scan(root)
    again = trees.parse(tree.data, max_files=10, max_bytes=10_000)
    assert again == tree and tree.hash == sha256_text(tree.data)
    assert {e.type for e in tree.entries} == {"dir", "file", "symlink"}
    assert sorted(where) == sorted(tree.blobs()) and tree.file_bytes == 10_000


def test_a_file_changed_behind_the_remembered_hash_is_read_again(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    f = root / "f"
    f.write_bytes(b"aaaa")
    time.sleep(0.2)  # old enough to be remembered
    first, _ = trees.scan(root)
    assert trees._known
    st = f.stat()
    f.write_bytes(b"bbbb")  # same size; its mtime set back: only ctime tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    again, _ = trees.scan(root)
    assert again.files[0].hash == sha256_text(b"bbbb") != first.files[0].hash


def test_scanning_refuses_a_symlink_that_leads_out(tmp_path):
    root = tmp_path / "t"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "out").symlink_to("../../elsewhere")
    with pytest.raises(TreeError, match="points outside"):
        trees.scan(root)


# ---- through real nodes ---------------------------------------------------------------------------------


def test_a_100_mb_input_tree_is_read_and_sent_only_once(start_nodes, tree_job, tmp_path):
    data = make_tree(tmp_path / "data", 100 * MiB, 25)
    files, total, digest = checksum(data)
    (node,) = start_nodes(1)
    with Client(peers=[node.address]) as client:
        first = client.submit(tree_job, args=["read", "/data"], dirs=[Preopen(str(data), "/data", True)])
        assert first.status == "ok", first.message
        assert first.stdout.decode() == f"read {files} {total} {digest}\n"
        second = client.submit(tree_job, args=["read", "/data"], dirs=[Preopen(str(data), "/data", True)])
        assert second.stdout == first.stdout and second.receipt["outputs"] == first.receipt["outputs"]
    ready = node.wait_event_count("files_ready", 2)
    listing = trees.scan(data)[0]
    assert ready[0]["fetched_bytes"] == 100 * MiB + listing.size and ready[0]["reused_bytes"] == 0
    assert ready[1]["fetched_bytes"] == 0 and ready[1]["reused_bytes"] == 100 * MiB  # nothing shipped again
    assert ready[0]["trees"] == ready[1]["trees"] == [listing.hash]


def test_the_output_tree_arrives_and_verifies_and_a_tampered_file_is_refused(start_nodes, tree_job, tmp_path):
    work = tmp_path / "work"
    (work / "keep").mkdir(parents=True)
    (work / "keep" / "same.txt").write_text("unchanged\n")
    (work / "change.txt").write_text("before\n")
    (node,) = start_nodes(1)
    wasm = tmp_path / "tree_job.wasm"
    wasm.write_bytes(tree_job)
    out, receipt = tmp_path / "out", tmp_path / "r.json"
    args = ["write", "/w/change.txt", "after", "mkdir", "/w/new", "write", "/w/new/made.txt", "made", "list", "/w"]
    proc = phase(
        "submit",
        str(wasm),
        *(f"--arg={a}" for a in args),
        "--dir",
        f"{work}::/w",
        "--out",
        str(out),
        "--receipt",
        str(receipt),
        "--deterministic",
        "--peer",
        node.address,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote /w/new/made.txt" in proc.stdout
    # new and changed files only, under the guest path; the host's own directory is untouched
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "w",
        "w/change.txt",
        "w/new",
        "w/new/made.txt",
    ]
    assert (out / "w" / "change.txt").read_text() == "after" and (work / "change.txt").read_text() == "before\n"
    ok = phase("verify", str(receipt), "--outputs", str(out))
    assert ok.returncode == 0 and "outputs" in ok.stdout, ok.stderr
    (out / "w" / "new" / "made.txt").write_text("forged")
    bad = phase("verify", str(receipt), "--outputs", str(out))
    assert bad.returncode == 1 and "outputs" in bad.stderr and "not the tree the receipt names" in bad.stderr
    assert "w/new/made.txt: changed" in bad.stderr and "w/change.txt" not in bad.stderr  # names the file
    (out / "w" / "new" / "made.txt").write_text("made")
    (out / "w" / "extra.txt").write_text("slipped in")
    (out / "w" / "change.txt").unlink()
    bad = phase("verify", str(receipt), "--outputs", str(out))
    assert (
        bad.returncode == 1 and "w/extra.txt: not in the tree" in bad.stderr and "w/change.txt: missing" in bad.stderr
    )
    (tmp_path / "out.tree.json").write_bytes(b'{"forged": 1}')  # a listing the receipt does not name is not used
    bad = phase("verify", str(receipt), "--outputs", str(out))
    assert bad.returncode == 1 and "hashes to" in bad.stderr and "cannot be named" in bad.stderr
    # and the node keeps nothing of the job once its client said done
    deadline = time.monotonic() + 10
    while list((node.data_dir / "jobs").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((node.data_dir / "jobs").iterdir()) == []


def test_nothing_of_one_job_is_seen_by_the_next(start_nodes, tree_job, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "in.txt").write_text("input\n")
    (node,) = start_nodes(1)
    with Client(peers=[node.address]) as client:
        first = client.submit(
            tree_job, args=["write", "/w/secret.txt", "s3cret", "mkdir", "/w/left"], dirs=[Preopen(str(work), "/w")]
        )
        assert first.stdout == b"wrote /w/secret.txt\nmade /w/left\n"
        second = client.submit(tree_job, args=["list", "/w"], dirs=[Preopen(str(work), "/w")])
        assert second.stdout == b"/w/in.txt\nend\n"
        ro = client.submit(
            tree_job, args=["write", "/w/in.txt", "x", "list", "/w"], dirs=[Preopen(str(work), "/w", True)]
        )
        assert ro.stdout.startswith(b"write /w/in.txt: ") and b"wrote" not in ro.stdout
    assert (work / "in.txt").read_text() == "input\n" and sorted(os.listdir(work)) == ["in.txt"]


def test_writing_more_than_disk_bytes_ends_output_limit(start_nodes, tree_job, tmp_path):
    """The job's write is refused (EDQUOT) when it would pass disk_bytes, not after: 200 MiB asked, 1 MiB kept; more
    entries than ``files`` likewise; a writable input tree that does not fit is refused before the job runs."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "in.txt").write_text("input\n")
    (node,) = start_nodes(1)
    with Client(peers=[node.address]) as client:
        r = client.submit(
            tree_job, args=["fill", "/w/big", str(200 * MiB)], dirs=[Preopen(str(work), "/w")], disk_bytes=MiB
        )
        assert r.status == "output_limit" and "disk_bytes of 1048576 bytes" in r.message and "EDQUOT" in r.message
        assert r.stdout.decode().startswith("fill /w/big: ") and "quota" in r.stdout.decode().lower()
        made = client.submit(
            tree_job, args=["mkdir", "/w/a", "mkdir", "/w/b", "mkdir", "/w/c"], dirs=[Preopen(str(work), "/w")], files=3
        )  # in.txt, a, b
        assert made.status == "output_limit" and "files of 3 entries" in made.message
        assert made.stdout.decode().splitlines()[:2] == ["made /w/a", "made /w/b"]
        assert "quota" in made.stdout.decode().splitlines()[2].lower()
        with pytest.raises(NetworkError, match="tree_too_big.*fs.files 1"):
            (work / "second.txt").write_text("x")
            client.submit(tree_job, args=["list", "/w"], dirs=[Preopen(str(work), "/w")], files=1)
    with Client(peers=[node.address]) as client:  # refused before anything is sent
        with pytest.raises(ValueError, match="--dir"):
            client.submit(tree_job, out=tmp_path / "o")
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        with pytest.raises(ValueError, match="empty or new directory"):
            client.submit(tree_job, dirs=[Preopen(str(work), "/w")], out=tmp_path / "full")
    assert r.receipt["outputs"]["hash"] == trees.build(()).hash


def test_trees_work_on_the_compiling_engine(start_nodes, tree_job, tmp_path):
    """A job that asks for wasmtime (``phase submit --engine``, the client's ``requires.runtime``) reads its input
    tree, writes an output tree that arrives and verifies, and a write past disk_bytes ends as it does on wasm3:
    EDQUOT at that write."""
    data = make_tree(tmp_path / "data", 256 * 1024, 4)
    files, total, digest = checksum(data)
    work, out, receipt = tmp_path / "w", tmp_path / "out", tmp_path / "r.json"
    work.mkdir()
    wasm = tmp_path / "tree_job.wasm"
    wasm.write_bytes(tree_job)
    (node,) = start_nodes(1)
    args = ["read", "/data", "mkdir", "/w/new", "write", "/w/new/made.txt", "made"]
    proc = phase(
        "submit", str(wasm), *(f"--arg={a}" for a in args), "--ro-dir", f"{data}::/data", "--dir", f"{work}::/w",
        "--out", str(out), "--receipt", str(receipt), "--engine", "wasmtime", "--peer", node.address,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"read {files} {total} {digest}", "made /w/new", "wrote /w/new/made.txt"]
    assert json.loads(receipt.read_text())["node"]["runtime"] == "wasmtime"
    assert (out / "w" / "new" / "made.txt").read_text() == "made" and os.listdir(work) == []
    ok = phase("verify", str(receipt), "--outputs", str(out))
    assert ok.returncode == 0 and "outputs" in ok.stdout, ok.stderr
    fill = ["fill", "/w/big", str(200 * MiB)]
    with Client(peers=[node.address]) as client:
        over = {
            runtime: client.submit(
                tree_job, args=fill, dirs=[Preopen(str(work), "/w")], disk_bytes=MiB, requires={"runtime": runtime}
            )
            for runtime in ("wasmtime", "wasm3")
        }
    assert [o.receipt["node"]["runtime"] for o in over.values()] == ["wasmtime", "wasm3"]
    w, w3 = over["wasmtime"], over["wasm3"]
    assert w.status == "output_limit" and "disk_bytes of 1048576 bytes" in w.message and "EDQUOT" in w.message
    assert (w.status, w.message, w.stdout, w.receipt["outputs"]) == (
        w3.status,
        w3.message,
        w3.stdout,
        w3.receipt["outputs"],
    )


# ---- bad trees, one by one, against a hand-driven connection ---------------------------------------------


def listing(entries: list[dict]) -> bytes:
    from pyphase.signing import canonical_bytes

    return canonical_bytes({"version": 1, "entries": entries})


def file_entry(path: str, data: bytes) -> dict:
    return {"path": path, "type": "file", "size": len(data), "mode": 0o644, "hash": sha256_text(data)}


def drive(node_address: str, module: bytes, data: bytes, blobs: dict[str, bytes], send: bool = True) -> wire.Message:
    """Offer a job whose one directory is the listing ``data``; answer every ``want`` from ``blobs`` (the listing
    included) unless ``send`` is False; return the node's final answer (reject or result)."""
    ctx = zmq.Context()
    conn = Conn(ctx, node_address, "127.0.0.1")
    fs = {
        "dirs": [{"guest": "/d", "readonly": True, "tree": {"hash": sha256_text(data), "size": len(data)}}],
        "disk_bytes": MiB,
        "files": 10,
    }
    manifest = make_manifest(module, b"", args=["read", "/d"], fs=fs)
    blobs = {sha256_text(data): data, **blobs}
    tag = b"t1"
    try:
        deadline = time.monotonic() + 30
        while not conn.send(wire.encode("offer", (b"",), job=tag, manifest=manifest)):
            time.sleep(0.01)
        while time.monotonic() < deadline:
            for msg in conn.drain(200):
                if msg.type == "accept" and msg["module"]:
                    conn.send(wire.encode("module", (module,), job=tag))
                elif msg.type == "want" and send:
                    chunk = blobs[msg["blob"]][msg["offset"] : msg["offset"] + msg["size"]]
                    conn.send(wire.encode("blob", (chunk,), job=tag, blob=msg["blob"], offset=msg["offset"]))
                elif msg.type in ("reject", "result", "error"):
                    return msg
        raise AssertionError("no answer from the node")
    finally:
        conn.close()
        ctx.term()


GOOD = b"good bytes\n"
BAD_TREES = {
    "dotdot": ([{"path": "..", "type": "dir"}], "bad_tree", "'..' component"),
    "dotdot-inside": ([{"path": "a", "type": "dir"}, file_entry("a/../x", GOOD)], "bad_tree", "'..' component"),
    "absolute": ([file_entry("/etc/passwd", GOOD)], "bad_tree", "absolute path"),
    "duplicate": ([file_entry("x", GOOD), file_entry("x", GOOD)], "bad_tree", "duplicate path"),
    "symlink-out": ([{"path": "l", "type": "symlink", "target": "../../etc"}], "bad_tree", "points outside"),
    "symlink-absolute": ([{"path": "l", "type": "symlink", "target": "/etc"}], "bad_tree", "points outside"),
    "no-parent": ([file_entry("a/x", GOOD)], "bad_tree", "no directory entry"),
    "too-many-files": ([file_entry(f"f{i}", GOOD) for i in range(5)], "tree_too_big", "more than 4 files"),
    "too-many-bytes": ([file_entry("big", b"x" * 5000)], "tree_too_big", "more than 4096 bytes"),
}


@pytest.fixture
def strict_node(start_nodes):
    (node,) = start_nodes(
        1, env={"PLASMD_LIMITS_TREE_FILES": "4", "PLASMD_LIMITS_TREE": "4KiB", "PLASMD_MODULE_WAIT": "1s"}
    )
    return node


def test_each_bad_tree_gets_its_own_reject_and_the_node_goes_on(strict_node, tree_job):
    for name, (entries, reason, detail) in BAD_TREES.items():
        answer = drive(
            strict_node.address,
            tree_job,
            listing(entries),
            {sha256_text(GOOD): GOOD, sha256_text(b"x" * 5000): b"x" * 5000},
        )
        assert answer.type == "reject", (name, answer.fields)
        assert answer["reason"] == reason and detail in answer["detail"], (name, answer.fields)
    # not canonical: the same entries with white space
    entries = [file_entry("x", GOOD)]
    spaced = json.dumps({"version": 1, "entries": entries}).encode()
    answer = drive(strict_node.address, tree_job, spaced, {sha256_text(GOOD): GOOD})
    assert answer["reason"] == "bad_tree" and "canonical" in answer["detail"]
    # a blob whose bytes do not match its hash
    answer = drive(
        strict_node.address, tree_job, listing([file_entry("x", GOOD)]), {sha256_text(GOOD): b"evil bytes\n"}
    )
    assert answer.type == "reject" and answer["reason"] == "blob_mismatch", answer.fields
    # a client that never sends what it was asked for
    answer = drive(strict_node.address, tree_job, listing([file_entry("x", GOOD)]), {}, send=False)
    assert answer.type == "reject" and answer["reason"] == "blob_timeout", answer.fields
    strict_node.wait_event("blob_timeout")
    # and the node still runs a good tree, sending nothing of the failed ones into it
    answer = drive(strict_node.address, tree_job, listing([file_entry("x", GOOD)]), {sha256_text(GOOD): GOOD})
    assert answer.type == "result" and answer["receipt"]["status"] == "ok"
    assert strict_node.alive
    assert list((strict_node.data_dir / "blobs" / "incoming").iterdir()) == []


def test_replicas_agree_on_the_output_tree(start_nodes, tree_job, tmp_path):
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "a.txt").write_text("a\n")
    nodes = start_nodes(2)
    with Client(peers=[n.address for n in nodes]) as client:
        r = client.submit(
            tree_job,
            args=["write", "/w/sub/b.txt", "b", "list", "/w"],
            dirs=[Preopen(str(work), "/w")],
            replicas=2,
            out=tmp_path / "out",
        )
    assert r.dissent == () and len(r.receipts) == 2
    assert r.receipts[0]["outputs"] == r.receipts[1]["outputs"] == r.outputs
    assert r.stdout == b"wrote /w/sub/b.txt\n/w/sub\n/w/sub/a.txt\n/w/sub/b.txt\nend\n"
    assert trees.verify_dir(tmp_path / "out", r.outputs).hash == r.outputs["hash"]
    assert (tmp_path / "out" / "w" / "sub" / "b.txt").read_text() == "b"


def test_output_bytes_that_do_not_match_the_receipt_are_refused(start_nodes, tree_job, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (node,) = start_nodes(1, misbehave="tamper-outputs")
    with Client(peers=[node.address]) as client:
        with pytest.raises(NetworkError, match="do not match"):
            client.submit(
                tree_job, args=["write", "/w/x.txt", "true"], dirs=[Preopen(str(work), "/w")], out=tmp_path / "o"
            )
    assert not (tmp_path / "o" / "w" / "x.txt").exists()  # nothing written under the name of a file that failed


def test_concurrent_fetches_share_the_nodes_budget_of_bytes_in_flight(start_nodes, tree_job, tmp_path):
    import threading

    (node,) = start_nodes(1, env={"PLASMD_HELD_BYTES": "2MiB"})  # 2 chunks in flight for every job together
    results: list = []

    def one(i: int) -> None:
        data = make_tree(tmp_path / f"t{i}", 6 * MiB, 3)
        with Client(peers=[node.address]) as client:
            results.append(client.submit(tree_job, args=["read", "/d"], dirs=[Preopen(str(data), "/d", True)]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [r.status for r in results] == ["ok"] * 3
    assert all(r.stdout.startswith(b"read 3 6291456 ") for r in results)
    assert [e["fetched_bytes"] > 6 * MiB for e in node.events("files_ready")] == [True] * 3


def test_a_tree_of_many_files_holds_few_descriptors(start_nodes, tree_job, tmp_path):
    data = tmp_path / "many"
    data.mkdir()
    for i in range(1500):
        (data / f"f{i:04d}").write_bytes(b"%d\n" % i)
    # fewer descriptors than files (a sandbox worker with directories needs about 1,040 of its own): part files
    # are opened as their bytes are asked for, at most 8 at once
    (node,) = start_nodes(1, prefix=("prlimit", "--nofile=1200:1200"))
    with Client(peers=[node.address]) as client:
        r = client.submit(tree_job, args=["read", "/d"], dirs=[Preopen(str(data), "/d", True)])
    assert r.status == "ok" and r.stdout.startswith(b"read 1500 "), (r.message, r.stdout[:200])


def test_trees_work_on_a_node_without_the_sandbox(start_nodes, tree_job, tmp_path):
    data = make_tree(tmp_path / "data", 3 * MiB, 4)
    files, total, digest = checksum(data)
    (node,) = start_nodes(1, sandbox=False)
    with Client(peers=[node.address]) as client:
        r = client.submit(tree_job, args=["read", "/d", "write", "/d/x", "no"], dirs=[Preopen(str(data), "/d", True)])
    assert r.stdout.decode().startswith(f"read {files} {total} {digest}\nwrite /d/x: ")  # read-only there too
