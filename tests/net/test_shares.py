"""The node's fair queue (pyphase.net.shares): turns between addresses, and the address that used the least
worker time lately first."""

from __future__ import annotations

import time

from pyphase.limits import Limits
from pyphase.net.shares import HeldJob, ShareCaps, Shares


def _shares() -> Shares:
    return Shares(ShareCaps(total_jobs=100, client_jobs=50, address_jobs=50, client_waiting=2, held_bytes=1 << 20))


def _job(shares: Shares, address: str, tag: bytes) -> HeldJob:
    job = HeldJob(
        b"rid-" + address.encode(), tag, {}, b"x", Limits(), "key-" + address, address, 0.0, 0.0, b"m", "queued"
    )
    shares.add(job)
    return job


def test_the_address_that_used_least_worker_time_goes_first():
    shares = _shares()
    long_job = _job(shares, "10.0.0.1", b"long")
    assert shares.next(workers=4) is long_job
    long_job.ran_from -= 3.0  # it ran 3 s
    shares.remove(long_job.key)
    first_in_turn = [_job(shares, "10.0.0.1", b"a%d" % i) for i in range(3)]
    short = _job(shares, "10.0.0.2", b"short")
    assert shares.next(workers=4) is short  # queued after 10.0.0.1's jobs, but its address used nothing
    assert shares.next(workers=4) is first_in_turn[0]
    assert 2.9 < shares.usage("10.0.0.1", time.monotonic()) < 3.1


def test_equal_usage_takes_turns_between_addresses():
    shares = _shares()
    a = [_job(shares, "10.0.0.1", b"a%d" % i) for i in range(2)]
    b = [_job(shares, "10.0.0.2", b"b%d" % i) for i in range(2)]
    order = [shares.next(workers=8) for _ in range(4)]
    assert order == [a[0], b[0], a[1], b[1]]
