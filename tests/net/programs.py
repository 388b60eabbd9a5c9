"""WAT sources of the network tests' jobs."""

import struct

# Reads stdin; the first 4 bytes (little-endian u32) times 1000 is a busy-loop count; then echoes stdin.
# So a test can choose how long a job runs and every job's output names its input.
SPIN_ECHO = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $n i32) (local $i i64) (local $count i64)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (if (i32.ge_u (local.get $n) (i32.const 4))
      (then (local.set $count (i64.mul (i64.extend_i32_u (i32.load (i32.const 64))) (i64.const 1000)))))
    (block $done (loop $l
      (br_if $done (i64.ge_u (local.get $i) (local.get $count)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $l)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def spin_input(thousands: int, tag: bytes = b"") -> bytes:
    """Input making SPIN_ECHO loop ``thousands`` * 1000 times (about 128k per second here), then echo."""
    return struct.pack("<I", thousands) + tag
