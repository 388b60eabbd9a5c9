"""The DHT guard for booted guests (tests/boot/qemu.py): a QEMU test cannot hand a guest a DHT node outside
this machine, since the suite's PHASE_DHT_ALLOW does not reach inside it."""

from __future__ import annotations

import pytest

from .qemu import check_guest_dht


@pytest.mark.parametrize(
    "append",
    ["phase.mode=internet", "phase.dht=off", "phase.dht=10.0.2.2:6881,10.0.2.2:6882", "phase.dht=[fec0::2]:1",
     "phase.dht=dht.phase.test:6881 phase.dns=10.0.2.2:53"],
)  # fmt: skip
def test_guest_dht_nodes_on_this_machine_pass(append: str) -> None:
    check_guest_dht(append)


@pytest.mark.parametrize(
    "append",
    ["phase.dht=router.example.org:6881", "phase.dht=10.0.2.2:6881,203.0.113.10:6881", "phase.dht=[2001:db8::1]:1",
     "phase.dht=192.168.1.1:6881"],
)  # fmt: skip
def test_guest_dht_nodes_elsewhere_fail(append: str) -> None:
    with pytest.raises(AssertionError, match="could be outside this machine"):
        check_guest_dht(append)
