"""Deterministic mode: clocks and random come from the job, so two runs agree byte for byte."""

from __future__ import annotations

import pyphase


def test_two_deterministic_runs_are_identical(probe_bytes):
    a = pyphase.run(probe_bytes, args=["clock"], deterministic=True)
    b = pyphase.run(probe_bytes, args=["clock"], deterministic=True)
    assert a.status == "ok"
    assert a.stdout == b.stdout and a.stdout_hash == b.stdout_hash and a.fuel_used == b.fuel_used


def test_deterministic_runs_differ_by_input(probe_bytes):
    a = pyphase.run(probe_bytes, b"one", args=["clock"], deterministic=True)
    b = pyphase.run(probe_bytes, b"two", args=["clock"], deterministic=True)
    assert a.stdout.splitlines()[-1] != b.stdout.splitlines()[-1]  # random depends on the job


def test_real_clocks_differ(probe_bytes):
    a = pyphase.run(probe_bytes, args=["clock"])
    b = pyphase.run(probe_bytes, args=["clock"])
    assert a.stdout != b.stdout


def test_deterministic_clock_is_monotonic_and_sleep_does_not_block(probe_bytes):
    r = pyphase.run(probe_bytes, args=["sleep"], deterministic=True)
    assert r.status == "ok"
    assert r.wall_us < 5_000_000
