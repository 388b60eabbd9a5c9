"""Every limit ends a job with its own status and a clear message, never a crash or a silent truncation."""

from __future__ import annotations

import time

import pytest

import pyphase
from pyphase import Limits


METERED = Limits(fuel=10**12)  # the compiling engine counts fuel only for jobs with a fuel limit


def test_fuel_counts_are_deterministic_and_limited(probe_bytes, engine):
    a = pyphase.run(probe_bytes, args=["count", "100000"], limits=METERED)
    b = pyphase.run(probe_bytes, args=["count", "100000"], limits=METERED)
    assert a.status == "ok" and a.fuel_used == b.fuel_used > 100000 // 8  # the compiler unrolls the loop
    # wasm3 counts exactly to the tick; wasmtime checks its fuel where its code does (block ends), so there a
    # limit well below the need is what must stop the job
    short = a.fuel_used - 1 if engine.endswith("wasm3") else a.fuel_used // 2
    limited = pyphase.run(probe_bytes, args=["count", "100000"], limits=Limits(fuel=short))
    assert limited.status == "fuel_exhausted"
    assert limited.fuel_used == short
    assert "fuel limit" in limited.message
    exact = pyphase.run(probe_bytes, args=["count", "100000"], limits=Limits(fuel=a.fuel_used))
    assert exact.status == "ok" and exact.fuel_used == a.fuel_used


def test_fuel_grows_with_work(probe_bytes):
    small = pyphase.run(probe_bytes, args=["count", "1000"], limits=METERED).fuel_used
    big = pyphase.run(probe_bytes, args=["count", "101000"], limits=METERED).fuel_used
    assert big - small >= 100000 // 8


def test_timeout_interrupts_a_loop_that_never_calls_out(probe_bytes):
    start = time.monotonic()
    r = pyphase.run(probe_bytes, args=["spin"], limits=Limits(timeout_ms=200))
    assert r.status == "timeout"
    assert "200 ms" in r.message
    assert time.monotonic() - start < 30  # generous: this asserts termination, not speed
    assert r.exit_code == -1


def test_timeout_in_wat_loop(wat):
    data = wat('(module (func (export "_start") (loop (br 0))))')
    r = pyphase.run(data, limits=Limits(timeout_ms=100))
    assert r.status == "timeout"


def test_fuel_stops_wat_loop(wat):
    data = wat('(module (func (export "_start") (loop (br 0))))')
    r = pyphase.run(data, limits=Limits(fuel=12345, timeout_ms=0))
    assert (r.status, r.fuel_used) == ("fuel_exhausted", 12345)


def test_output_limit_has_its_own_status(probe_bytes):
    r = pyphase.run(probe_bytes, args=["flood"], limits=Limits(output_bytes=100_000))
    assert r.status == "output_limit"
    assert len(r.stdout) + len(r.stderr) == 100_000  # kept up to the cap, and the status says so
    assert "100000 bytes" in r.message


def test_output_exactly_at_limit_is_ok(probe_bytes):
    data = b"x" * 5000
    r = pyphase.run(probe_bytes, data, args=["cat"], limits=Limits(output_bytes=5000 + 5))  # + "5000\n" on stderr
    assert r.status == "ok" and r.stdout == data


def test_memory_growth_past_limit_is_memory_limit(probe_bytes):
    r = pyphase.run(probe_bytes, args=["grow"], limits=Limits(memory_bytes=48 << 20))
    assert r.status == "memory_limit", r.message
    assert "refused" in r.message
    assert b"malloc failed after" in r.stderr
    assert r.memory_peak_bytes <= 48 << 20


def test_initial_memory_above_limit_is_refused(wat):
    data = wat('(module (memory 100) (func (export "_start")))')
    r = pyphase.run(data, limits=Limits(memory_bytes=1 << 20))
    assert r.status == "memory_limit"
    assert "initial memory" in r.message


def test_memory_grow_returns_minus_one_past_declared_max(wat):
    data = wat(
        '(module (memory 1 2) (func (export "_start") (result i32)'
        " (drop (memory.grow (i32.const 1))) (memory.grow (i32.const 1))))"
    )
    r = pyphase.run(data)
    assert (r.status, r.exit_code) == ("ok", -1)


@pytest.mark.parametrize("delta", ["-1", "0x7fffffff", "-65536"])
def test_memory_grow_huge_or_negative_never_shrinks(wat, delta):
    # wasm3 0.5.0 wrapped the page count (#442, #498); patch 0002 keeps it in 64 bits
    data = wat(
        f'(module (memory 1) (func (export "_start") (result i32)'
        f" (drop (memory.grow (i32.const {delta})))"
        f" (i32.store (i32.const 65532) (i32.const 7))"
        f" (i32.add (memory.size) (i32.load (i32.const 65532)))))"
    )
    r = pyphase.run(data)
    assert (r.status, r.exit_code) == ("ok", 8)


def test_untouched_memory_costs_no_resident_pages(probe_bytes):
    # a 1 GiB limit with a small job must work: memory is reserved, not zeroed up front
    r = pyphase.run(probe_bytes, args=["touch", "4"], limits=Limits(memory_bytes=1 << 30))
    assert (r.status, r.stdout) == ("ok", b"touched 4 MiB")


def test_limits_are_validated():
    with pytest.raises(pyphase.LimitsError):
        Limits(memory_bytes=-1)
    with pytest.raises(pyphase.LimitsError):
        Limits(stack_bytes=1)
    with pytest.raises(pyphase.LimitsError):
        Limits(memory_bytes=8 << 30)


def test_limit_parsing():
    from pyphase.limits import parse_duration_ms, parse_size

    assert parse_size("64MiB") == 64 << 20
    assert parse_size("1.5KB") == 1500
    assert parse_size("64MB") == 64_000_000 and parse_size("64mb") == 64_000_000
    assert parse_size("1KiB") == 1024 and parse_size("100B") == 100 and parse_size("0") == 0
    assert parse_duration_ms("2s") == 2000
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("2m") == 120_000 and parse_duration_ms("0") == 0
    with pytest.raises(pyphase.LimitsError):
        parse_size("lots")


@pytest.mark.parametrize(
    "text, says",
    [
        ("64", ["no unit", "64MiB", "64KiB", "64B"]),
        ("64k", ["ambiguous", "64KiB (65,536 bytes)", "64KB (64,000 bytes)"]),
        ("64M", ["ambiguous", "64MiB (67,108,864 bytes)", "64MB (64,000,000 bytes)"]),
    ],
)
def test_a_size_without_a_clear_unit_is_refused_with_the_choices(text, says):
    from pyphase.limits import parse_size

    with pytest.raises(pyphase.LimitsError) as info:
        parse_size(text)
    assert all(s in str(info.value) for s in says), str(info.value)


def test_a_duration_without_a_unit_is_refused_except_zero():
    from pyphase.limits import parse_duration_ms

    with pytest.raises(pyphase.LimitsError, match=r"'5' has no unit: write 5s, 5ms or 5m"):
        parse_duration_ms("5")
    with pytest.raises(pyphase.LimitsError, match="no unit"):
        parse_duration_ms(5)


def test_memory_below_one_page_is_refused_not_rounded_to_nothing():
    with pytest.raises(pyphase.LimitsError, match="less than one WebAssembly page"):
        Limits(memory_bytes=1024)
    assert Limits(memory_bytes=0).memory_bytes == 0


def test_limits_are_described_in_their_units():
    from pyphase.limits import format_duration_ms, format_size

    assert [format_size(n) for n in (64 << 20, 64_000_000, 61 * 2**20, 1000, 100, 1_234_567)] == [
        "64 MiB",
        "64 MB",
        "61 MiB",
        "1 KB",
        "100 B",
        "1,234,567 bytes (1.2 MiB)",
    ]
    assert [format_duration_ms(n) for n in (0, 250, 60_000, 1500)] == ["no limit", "250 ms", "1 min", "1.5 s"]
    assert Limits(memory_bytes=512 << 20, timeout_ms=0).within(Limits(memory_bytes=256 << 20, timeout_ms=60_000)) == [
        "memory_bytes 512 MiB exceeds the ceiling 256 MiB",
        "timeout_ms unlimited exceeds the ceiling 1 min",
    ]


def test_timeout_holds_against_bulk_memory_work(wat):
    # Each iteration fills 48 MiB: without per-byte fuel (patch 0007) the clock would be read only every
    # 4096 iterations, minutes late. The bound is generous; it separates "prompt" from "minutes".
    data = wat(
        '(module (memory 768) (func (export "_start")'
        " (loop (memory.fill (i32.const 0) (i32.const 1) (i32.const 50331648)) (br 0))))"
    )
    r = pyphase.run(data, limits=Limits(memory_bytes=64 << 20, timeout_ms=300))
    assert r.status == "timeout"
    assert r.wall_us < 20_000_000


@pytest.mark.parametrize("engine", ["wasm3"], ids=["wasm3-only(wasmtime's fuel does not count bulk bytes)"])
def test_bulk_work_costs_fuel_by_the_byte(wat, engine):
    def fuel(n: int) -> int:
        data = wat(
            f'(module (memory 1) (func (export "_start") (memory.fill (i32.const 0) (i32.const 1) (i32.const {n}))))'
        )
        return pyphase.run(data).fuel_used

    assert fuel(6400) - fuel(0) == 100


def test_host_io_costs_fuel_by_the_byte(probe_bytes):
    empty = pyphase.run(probe_bytes, b"", args=["cat"], limits=METERED).fuel_used
    full = pyphase.run(
        probe_bytes, b"x" * 640_000, args=["cat"], limits=Limits(fuel=10**12, output_bytes=1 << 20)
    ).fuel_used
    assert full - empty >= 2 * 10_000  # read and written: one tick per 64 bytes each way


def test_memory_limit_above_what_wasm3_holds_is_capped(wat):
    r = pyphase.run(wat('(module (memory 40000) (func (export "_start")))'), limits=Limits(memory_bytes=4 << 30))
    assert r.status == "memory_limit" and str(2 << 30) in r.message


def test_limit_statuses_name_the_limit_that_fixes_them(wat):
    spin = wat('(module (memory 1) (func (export "_start") (loop (br 0))))')
    assert "--timeout" in pyphase.run(spin, limits=Limits(timeout_ms=50)).message
    assert "--fuel" in pyphase.run(spin, limits=Limits(fuel=1000)).message
    big = wat('(module (memory 20) (func (export "_start")))')
    r = pyphase.run(big, limits=Limits(memory_bytes=1 << 20))
    assert r.status == "memory_limit" and "20 pages" in r.message and "--memory" in r.message, r.message
    assert "--entry" in pyphase.run(big, entry="main").message
