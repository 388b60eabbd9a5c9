"""Unit tests of the wire codec and the node's module cache (no processes)."""

from __future__ import annotations

import hashlib
import os

import pytest

from pyphase.net import wire
from pyphase.net.blobs import BlobStore, Incoming
from pyphase.net.cache import ModuleCache


def h(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_every_message_type_round_trips():
    samples = {
        "caps?": ({}, ()),
        "caps": ({"caps": {"arch": "x86_64"}}, ()),
        "offer": ({"job": b"t1", "manifest": {"version": 1}, "stream": True}, (b"stdin",)),
        "accept": ({"job": b"t1", "module": True, "load": {"running": 1, "queued": 0, "workers": 2}}, ()),
        "reject": ({"job": b"t1", "reason": "busy", "detail": "full"}, ()),
        "module": ({"job": b"t1"}, (b"\0asm",)),
        "chunk": ({"job": b"t1", "stream": 1, "offset": 0}, (b"out",)),
        "result": ({"job": b"t1", "receipt": {"status": "ok"}}, (b"out", b"err")),
        "error": ({"code": "malformed", "detail": "x"}, ()),
        "dial?": ({"nonce": b"n" * 16, "port": 7465}, ()),
        "dial": ({"nonce": b"n" * 16, "ok": True, "seen": "198.18.0.11", "detail": ""}, ()),
        "dialback": ({"nonce": b"n" * 16}, ()),
        "want": ({"job": b"t1", "blob": h(b"x"), "offset": 0, "size": 1}, ()),
        "blob": ({"job": b"t1", "blob": h(b"x"), "offset": 0}, (b"x",)),
        "done": ({"job": b"t1"}, ()),
    }
    assert set(samples) == set(wire.MESSAGES)
    for type_, (fields, payloads) in samples.items():
        msg = wire.decode(wire.encode(type_, payloads, **fields))
        assert msg.type == type_ and msg.fields == fields and msg.payloads == payloads


def test_encode_refuses_what_decode_would():
    with pytest.raises(ValueError):
        wire.encode("offer", (), job=b"t", manifest={})
    with pytest.raises(ValueError):
        wire.encode("caps?", (), bogus=1)


def test_load_is_checked():
    assert wire.check_load({"running": 1, "queued": 2, "workers": 3}) == {"running": 1, "queued": 2, "workers": 3}
    assert wire.check_load({"running": -1, "queued": 0, "workers": 1}) is None
    assert wire.check_load({"running": True, "queued": 0, "workers": 1}) is None
    assert wire.check_load("busy") is None


def test_cache_put_get_and_lru(tmp_path):
    cache = ModuleCache(tmp_path, max_bytes=3000, memory_bytes=0)
    blobs = [os.urandom(1000) for _ in range(4)]
    for b in blobs[:3]:
        assert cache.put(h(b), b)
    assert cache.get(h(blobs[0])) == blobs[0]  # 0 is now the most recent
    assert cache.put(h(blobs[3]), blobs[3])  # evicts 1, the least recently used
    assert h(blobs[1]) not in cache and cache.get(h(blobs[1])) is None
    assert all(cache.get(h(b)) == b for b in (blobs[0], blobs[2], blobs[3]))
    assert cache.disk_bytes <= 3000
    again = ModuleCache(tmp_path, max_bytes=3000)  # the index is rebuilt from disk
    assert len(again) == 3 and again.get(h(blobs[3])) == blobs[3]


def test_cache_refuses_wrong_hash_and_detects_corruption(tmp_path):
    cache = ModuleCache(tmp_path, max_bytes=1 << 20, memory_bytes=0)
    data = b"\0asm module"
    assert not cache.put(h(b"other"), data)
    assert cache.put(h(data), data)
    (tmp_path / (h(data)[7:] + ".wasm")).write_bytes(b"\0asm swapped")
    assert cache.get(h(data)) is None  # re-hashed on load: refused and removed
    assert h(data) not in cache and not (tmp_path / (h(data)[7:] + ".wasm")).exists()


def test_cache_memory_layer_is_bounded(tmp_path):
    cache = ModuleCache(tmp_path, max_bytes=1 << 20, memory_bytes=2500)
    blobs = [os.urandom(1000) for _ in range(5)]
    for b in blobs:
        cache.put(h(b), b)
    assert cache._mem_size <= 2500
    assert all(cache.get(h(b)) == b for b in blobs)


def test_blob_store_streams_checks_links_and_evicts(tmp_path):
    store = BlobStore(tmp_path / "blobs", max_bytes=3000)
    blobs = [os.urandom(1000) for _ in range(4)]
    for i, b in enumerate(blobs[:3]):
        part = Incoming(store.incoming, f"p{i}", h(b), len(b))
        part.write(0, b[:600])
        with pytest.raises(ValueError):
            part.write(0, b[600:])  # out of order
        part.write(600, b[600:])
        assert part.complete and part.finish()
        store.adopt(part.path, h(b), len(b))
    assert store.link(h(blobs[0]), str(tmp_path / "a"))  # 0 is now the most recent
    bad = Incoming(store.incoming, "bad", h(blobs[3]), 1000)
    bad.write(0, os.urandom(1000))
    assert not bad.finish() and not os.path.exists(bad.path)  # bytes not matching their name never enter
    part = Incoming(store.incoming, "p3", h(blobs[3]), 1000)
    part.write(0, blobs[3])
    assert part.finish()
    store.adopt(part.path, h(blobs[3]), 1000)  # evicts 1, the least recently used
    assert h(blobs[1]) not in store and not store.link(h(blobs[1]), str(tmp_path / "b"))
    assert (tmp_path / "a").read_bytes() == blobs[0] and store.bytes <= 3000
    assert len(BlobStore(tmp_path / "blobs", max_bytes=3000)) == 3  # the index is rebuilt from disk


def test_a_corrupted_blob_in_the_store_is_never_used(tmp_path):
    """A blob is hashed again before its first use after the store opens, and whenever its file changed: bytes
    that no longer match (same size) are deleted, not linked into a job."""
    store = BlobStore(tmp_path / "blobs", max_bytes=1 << 20)
    good = [os.urandom(1000) for _ in range(3)]
    for i, b in enumerate(good):
        part = Incoming(store.incoming, f"p{i}", h(b), len(b))
        part.write(0, b)
        assert part.finish()
        store.adopt(part.path, h(b), len(b))

    def corrupt(b: bytes) -> None:
        path = tmp_path / "blobs" / h(b).split(":")[1]
        os.chmod(path, 0o644)
        path.write_bytes(bytes([b[0] ^ 1]) + b[1:])  # same size
        os.chmod(path, 0o444)

    corrupt(good[0])  # while the store is open: its file changed since it was hashed
    assert not store.link(h(good[0]), str(tmp_path / "a")) and h(good[0]) not in store
    reopened = BlobStore(tmp_path / "blobs", max_bytes=1 << 20)
    corrupt(good[1])  # on disk when the store opened: hashed before its first use
    assert not reopened.link(h(good[1]), str(tmp_path / "b")) and not (tmp_path / "b").exists()
    assert not (tmp_path / "blobs" / h(good[1]).split(":")[1]).exists()
    assert reopened.link(h(good[2]), str(tmp_path / "c")) and (tmp_path / "c").read_bytes() == good[2]
