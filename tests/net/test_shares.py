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


def test_a_finished_job_is_charged_what_it_ran_in_its_worker():
    """The hand-offs around a short job stretch with the machine's load; the address is charged the job's own
    run time, so a client of 1 ms jobs on a busy node still counts as light."""
    shares = _shares()
    job = _job(shares, "10.0.0.1", b"short")
    assert shares.next(workers=2) is job
    job.ran_from -= 0.5  # the node held the worker 0.5 s
    shares.remove(job.key, worker_s=0.001)  # the job itself ran 1 ms
    assert shares.usage("10.0.0.1", time.monotonic()) < 0.01


def _charged(shares: Shares, address: str, seconds: float) -> None:
    job = _job(shares, address, b"past")
    assert shares.next(workers=8) is job
    shares.remove(job.key, worker_s=seconds)


def test_the_last_free_worker_is_kept_for_a_lighter_address_with_nothing_running():
    """Two heavy addresses cannot hold both workers while a light one waits out their longest job: with one
    worker left, it goes to no heavier address while the light one is active and has nothing running."""
    shares = _shares()
    for address, used in (("10.0.0.1", 0.001), ("10.0.0.2", 5.0), ("10.0.0.3", 3.0)):
        _charged(shares, address, used)
    light = _job(shares, "10.0.0.1", b"light")
    assert shares.next(workers=2) is light
    heavy = [_job(shares, "10.0.0.2", b"h%d" % i) for i in range(2)] + [_job(shares, "10.0.0.3", b"g")]
    assert shares.next(workers=2) is heavy[2]  # the lighter of the heavy ones takes the second worker
    shares.remove(light.key, worker_s=0.001)  # the light job is done; its client sends the next one soon
    assert shares.next(workers=2) is None  # one worker left: kept for 10.0.0.1
    light = _job(shares, "10.0.0.1", b"light2")
    assert shares.next(workers=2) is light
    shares.remove(heavy[2].key, worker_s=3.0)
    assert shares.next(workers=2) is heavy[0]  # the light address has a job running: nothing to keep


def test_offers_waiting_for_their_module_do_not_make_an_address_active():
    """An address whose offers never become ready (their module never comes) takes no worker and makes no
    other address hold one back."""
    shares = _shares()
    waiting = HeldJob(b"rid-w", b"w", {}, b"x", Limits(), "key-w", "10.0.0.9", 0.0, 0.0, None, "waiting")
    shares.add(waiting)
    jobs = [_job(shares, "10.0.0.1", b"a%d" % i) for i in range(2)]
    assert [shares.next(workers=2) for _ in range(2)] == jobs  # alone among active addresses: both workers
