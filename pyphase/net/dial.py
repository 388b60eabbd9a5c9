"""Choosing how to dial a node from its DHT record: every address and relay it names, in the record's order.

A record may name several ways in (a port-mapped address, a LAN address, up to two relays); the first may
well be the wrong one from where the client stands (a LAN client without hairpin NAT, a relay that lost the
node). :func:`first_reachable` tries them all at once, each within ``timeout``, and takes the earliest in the
record's order that answers: a direct address by a TCP connection, a relay by opening (and closing) a
circuit to the node, so a relay that refuses (``no_reservation``) is passed over with its reason. CURVE
then proves the key on the chosen way, as for any address.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from pyphase.errors import NetworkError
from pyphase.net.addresses import parse_address, split_relayed
from pyphase.net.records import NodeRecord
from pyphase.net.relay import RelayError, open_circuit

__all__ = ["DIAL_TIMEOUT_S", "first_reachable", "probe"]

DIAL_TIMEOUT_S = 3.0  # per address; they are tried at once, so a record costs at most this


def probe(address: str, timeout: float) -> str | None:
    """Why ``address`` (``PEERID@HOST:PORT`` or ``PEERID@relay/HOST:PORT``) cannot be dialled now, or None."""
    direct, relayed = split_relayed(address)
    peer_id, _, host, port = parse_address(direct)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    with sock:
        if relayed:
            try:
                open_circuit(sock, peer_id, timeout)
            except RelayError as exc:
                return f"the relay opened no circuit: {exc}"
    return None


def first_reachable(record: NodeRecord, timeout: float = DIAL_TIMEOUT_S) -> str:
    """The first of ``record``'s :attr:`~NodeRecord.candidates` that answers within ``timeout`` (each tried at
    once). A single way in is tried too: a node that moved, or changed relays, leaves its older record on DHT
    nodes for a while, and a lookup may read that one. Raises :class:`~pyphase.errors.NetworkError` naming every
    way tried and why it failed (the resolver then looks again), ``RecordError`` when the record names none."""
    candidates = record.candidates
    if not candidates:
        return record.address  # RecordError
    pool = ThreadPoolExecutor(len(candidates), thread_name_prefix="phase-dial")
    try:
        tries = [pool.submit(probe, c, timeout) for c in candidates]
        failures = []
        for candidate, attempt in zip(candidates, tries):
            why = attempt.result()
            if why is None:
                return candidate
            failures.append(f"{candidate.split('@', 1)[1]}: {why}")
    finally:
        pool.shutdown(wait=False)
    raise NetworkError(f"no way into {record.peer_id} that its record names answered (" + "; ".join(failures) + ")")
