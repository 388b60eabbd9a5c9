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
        b"rid-" + address.encode(),
        tag,
        {},
        b"x",
        Limits(),
        "key-" + address,
        address,
        time.monotonic(),
        0.0,
        b"m",
        "queued",
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


def test_the_last_free_worker_is_kept_for_an_address_of_shorter_jobs():
    """An address whose jobs lately ran far longer than another active address's does not get the last free
    worker (it would hold it for a whole long job while the short ones queue behind it), and runs in the
    background; it still gets every worker but the last, and all of them once the other address is quiet."""
    shares = _shares()
    for address, seconds in (("10.0.0.1", 1.0), ("10.0.0.2", 0.02)):
        job = _job(shares, address, b"first")
        assert shares.next(workers=2) is job
        job.ran_from -= seconds
        shares.remove(job.key)
    assert shares.job_length("10.0.0.1") > 0.9
    now = time.monotonic()
    assert shares.yields_to_shorter("10.0.0.1", now) and not shares.yields_to_shorter("10.0.0.2", now)
    long_jobs = [_job(shares, "10.0.0.1", b"l%d" % i) for i in range(3)]
    assert shares.next(workers=2) is long_jobs[0]  # two workers free: it gets one
    assert shares.next(workers=2) is None  # the last one waits for 10.0.0.2, which has nothing queued yet
    short = _job(shares, "10.0.0.2", b"short")
    assert shares.next(workers=2) is short
    shares.remove(short.key)
    del shares._last_offer["10.0.0.2"]  # 10.0.0.2 went quiet (RECENT_S passed): nothing is kept for it any more
    assert shares.next(workers=2) is long_jobs[1]
