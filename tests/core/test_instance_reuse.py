"""Instances are reused between jobs of one module (compiled code kept); no state may leak between jobs."""

from __future__ import annotations

import threading

import pyphase

STATEFUL = """(module
  (memory 1 4)
  (global $g (mut i32) (i32.const 10))
  (data (i32.const 100) "\\05")
  (func $start (global.set $g (i32.add (global.get $g) (i32.const 1))))
  (start $start)
  (func (export "_start") (result i32)
    ;; 1000 * memory.size + 100 * global + byte at 100 + byte at 70000 (reachable only after a grow)
    (i32.store8 (i32.const 100) (i32.add (i32.load8_u (i32.const 100)) (i32.const 1)))
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (drop (memory.grow (i32.const 1)))
    (i32.store8 (i32.const 70000) (i32.add (i32.load8_u (i32.const 70000)) (i32.const 1)))
    (i32.add (i32.add (i32.mul (memory.size) (i32.const 1000)) (i32.mul (global.get $g) (i32.const 100)))
             (i32.add (i32.load8_u (i32.const 100)) (i32.load8_u (i32.const 70000))))))"""

EXPECTED = 2 * 1000 + 12 * 100 + 6 + 1  # start ran once (11), entry (12); data 5 -> 6; fresh page byte 1


def test_every_job_starts_from_the_initial_state(wat):
    module = pyphase.Module(wat(STATEFUL))
    results = [pyphase.run(module) for _ in range(5)]
    assert [(r.status, r.exit_code) for r in results] == [("ok", EXPECTED)] * 5
    assert len({r.fuel_used for r in results}) == 1


def test_reuse_after_a_trap_and_with_other_limits(wat, probe_bytes):
    module = pyphase.Module(probe_bytes)
    assert pyphase.run(module, args=["spin"], limits=pyphase.Limits(fuel=10_000)).status == "fuel_exhausted"
    a = pyphase.run(module, b"abc", args=["cat"])
    b = pyphase.run(module, b"abc", args=["cat"], limits=pyphase.Limits(memory_bytes=512 << 20, stack_bytes=1 << 20))
    assert a.stdout == b.stdout == b"abc"
    assert a.fuel_used == b.fuel_used


def test_memory_contents_do_not_leak(probe_bytes):
    module = pyphase.Module(probe_bytes)
    first = pyphase.run(module, b"secret" * 1000, args=["cat"])
    second = pyphase.run(module, b"", args=["cat"])
    assert first.stdout == b"secret" * 1000 and second.stdout == b""


# stdin's bytes n, r: sum the bytes at both ends of every 4 KiB of pages 1..r (what an earlier job left), then
# write 1 at both ends of pages 1..n. Reading a page maps it too, so r decides what reset sees as touched.
TOUCHER = """(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory 4)
  (func (export "_start") (result i32)
    (local $p i32) (local $sum i32) (local $n i32) (local $r i32)
    (i32.store (i32.const 8) (i32.const 0))
    (i32.store (i32.const 12) (i32.const 2))
    (drop (call $read (i32.const 0) (i32.const 8) (i32.const 1) (i32.const 16)))
    (local.set $n (i32.load8_u (i32.const 0)))
    (local.set $r (i32.load8_u (i32.const 1)))
    (local.set $p (i32.const 1))
    (block $done (loop $sum_loop
      (br_if $done (i32.gt_u (local.get $p) (local.get $r)))
      (local.set $sum (i32.add (local.get $sum) (i32.add
        (i32.load8_u (i32.shl (local.get $p) (i32.const 12)))
        (i32.load8_u (i32.add (i32.shl (local.get $p) (i32.const 12)) (i32.const 4095))))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $sum_loop)))
    (local.set $p (i32.const 1))
    (block $done2 (loop $write_loop
      (br_if $done2 (i32.gt_u (local.get $p) (local.get $n)))
      (i32.store8 (i32.shl (local.get $p) (i32.const 12)) (i32.const 1))
      (i32.store8 (i32.add (i32.shl (local.get $p) (i32.const 12)) (i32.const 4095)) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $write_loop)))
    (local.get $sum)))"""


def test_pages_kept_between_jobs_are_zeroed_like_the_rest(wat):
    """The pages a module's jobs touch are zeroed in place between jobs (learned at an instance's second reset
    and every 64th after), all others dropped: whatever a job wrote, the next one reads zeros."""
    module = pyphase.Module(wat(TOUCHER))
    small = [(2, 8)] * 70  # learned: the first pages and 1..8 kept
    mixed = [(8, 8), (5, 8), (20, 8), (0, 8), (3, 63), (63, 63), (1, 8), (0, 63)] * 3  # inside, beyond, everything
    again = [(4, 6)] * 64 + [(40, 8), (0, 63), (2, 2), (0, 63)]  # learned anew after reads of every page
    pattern = small + mixed + again
    codes = [pyphase.run(module, bytes(job), engine="wasm3").exit_code for job in pattern]
    assert codes == [0] * len(pattern)


def test_concurrent_jobs_of_one_module(wat):
    module = pyphase.Module(wat(STATEFUL))
    codes: list[int] = []

    def worker() -> None:
        for _ in range(50):
            codes.append(pyphase.run(module).exit_code)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [EXPECTED] * 200


def test_precompiled_instances_in_sandbox_workers_behave_the_same(wat, probe_bytes):
    # The fork server prepares (instantiates and compiles) cached modules so workers inherit compiled code:
    # the start function must still run in each job, state must be fresh, fuel identical to a lazy first run.
    stateful = wat(STATEFUL)
    fresh = pyphase.run(pyphase.Module(stateful), engine="wasm3").fuel_used  # new Module object: lazily compiled
    with pyphase.Sandbox(workers=1) as sandbox:
        results = [sandbox.run(stateful) for _ in range(4)]  # first sends bytes, later ones hit the cache
        probes = [sandbox.run(probe_bytes, b"abc", args=["cat"]) for _ in range(3)]
    assert [(r.status, r.exit_code) for r in results] == [("ok", EXPECTED)] * 4
    assert {r.fuel_used for r in results} == {fresh}
    assert {(r.stdout, r.fuel_used) for r in probes} == {
        (b"abc", pyphase.run(probe_bytes, b"abc", args=["cat"], engine="wasm3").fuel_used)
    }
