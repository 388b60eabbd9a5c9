"""``phase dht``: what an operator needs to see why a node is or is not found on the Mainline DHT.

``phase dht record PEERID`` looks up a node's signed record (and says why it is refused, if it is);
``phase dht rendezvous`` lists the nodes announced under the ``phase/1`` rendezvous info-hash and what
each answered to the record query. Both join the DHT read-only, through ``--dht-bootstrap`` (default
``PHASE_DHT_BOOTSTRAP``, else libtorrent's default router).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

from pyphase.cli.jobs import fail
from pyphase.errors import RecordError


def dht_addresses(bootstrap: Sequence[str] | None, timeout: float) -> list[str]:
    """``PEERID@HOST:PORT`` of every node the rendezvous finds whose key its record proves (listing is the
    point: the lookup goes on until 2 s bring no new endpoint)."""
    from pyphase.net.dht import client_dht, find_nodes

    with client_dht(bootstrap) as dht:
        return [r.address for r in find_nodes(dht, timeout=max(timeout, 8.0), settle=2.0) if r.candidates]


def cmd_record(args: argparse.Namespace) -> int:
    from pyphase.net.dht import client_dht, resolve_peer

    started = time.monotonic()
    try:
        with client_dht(args.dht_bootstrap) as dht:
            record = resolve_peer(dht, args.peer_id, timeout=args.timeout)
    except RecordError as exc:
        print(f"phase: {args.peer_id}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as exc:
        return fail(str(exc))
    address = record.address if record.candidates else f"{record.peer_id}@(no address or relay now)"
    doc = {**record.to_json(), "address": address, "lookup_ms": int((time.monotonic() - started) * 1000)}
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        print(f"{address}  seq {record.seq}  expires in {record.expires - int(time.time())} s")
        for key in ("addresses", "relays", "engines", "caps"):
            print(f"  {key}: {doc[key]}")
        reach = record.caps.get("reach")
        print(f"  reachability: {reach} (the node's own dial-back check)" if reach else "  reachability: not checked")
    return 0


def cmd_rendezvous(args: argparse.Namespace) -> int:
    from pyphase.net.dht import client_dht, query_records, rendezvous_hash

    klass = f"arch/{args.arch}" if args.arch else f"engine/{args.engine}" if args.engine else ""
    try:
        with client_dht(args.dht_bootstrap) as dht:
            announced = dht.get_peers(rendezvous_hash(klass), timeout=args.timeout, settle=2.0, rounds=2)
    except (ValueError, RuntimeError, OSError) as exc:
        return fail(str(exc))
    answers = query_records(announced)
    rows: list[dict[str, Any]] = []
    for host, port in announced:
        record = answers.get((host, port))
        rows.append(
            {
                "endpoint": f"{host}:{port}",
                "peer_id": record.peer_id if record else None,
                "record": record.to_json() if record else None,
            }
        )
    if args.json:
        print(json.dumps({"info_hash": rendezvous_hash(klass).hex(), "peers": rows}, sort_keys=True))
        return 0
    print(
        f"rendezvous {rendezvous_hash(klass).hex()} ({'phase/1/' + klass if klass else 'phase/1'}): "
        f"{len(rows)} announced"
    )
    for row in rows:
        print(f"  {row['endpoint']}  " + (f"{row['peer_id']}" if row["peer_id"] else "no valid record answer"))
    return 0 if rows else 1


def register(subparsers: Any) -> None:
    """Add ``dht`` (``record``, ``rendezvous``) to the ``phase`` command's sub-parsers."""
    p = subparsers.add_parser(
        "dht",
        help="look up node records and the rendezvous on the Mainline DHT",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="dht_command", metavar="COMMAND", required=True)
    r = sub.add_parser(
        "record",
        help="a node's signed record, verified",
        description="Look up PEERID's record (BEP 44, salt phase/1), verify its signature and validity, print it.",
    )
    r.add_argument("peer_id", metavar="PEERID")
    r.set_defaults(func=cmd_record)
    z = sub.add_parser(
        "rendezvous",
        help="nodes announced for phase/1 and their record answers",
        description="List the IP:port pairs announced under the phase/1 info-hash (BEP 5) and "
        "ask each for its signed record over UDP.",
    )
    which = z.add_mutually_exclusive_group()
    which.add_argument("--arch", metavar="ARCH", help="the per-arch rendezvous (e.g. x86_64) instead of all nodes")
    which.add_argument(
        "--engine", metavar="ENGINE", help="the per-engine rendezvous (wasm3, wasmtime) instead of all nodes"
    )
    z.set_defaults(func=cmd_rendezvous)
    for q in (r, z):
        q.add_argument(
            "--dht-bootstrap",
            action="append",
            default=None,
            metavar="HOST:PORT",
            help="DHT node to join through (repeatable; default $PHASE_DHT_BOOTSTRAP)",
        )
        q.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="lookup time limit")
        q.add_argument("--json", action="store_true", help="print JSON")
