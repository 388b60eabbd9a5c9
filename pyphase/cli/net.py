"""``phase submit`` and ``phase peers``: the network half of the ``phase`` command.

:func:`pyphase.cli.build_parser` calls :func:`register` with its sub-parsers. Uses only the public API
(:class:`pyphase.Client`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pyphase.cli.jobs import (
    add_dir_options,
    EXIT_HELP,
    LIMITS_HELP,
    EXIT_FAILED,
    EXIT_NETWORK,
    EXIT_QUORUM,
    UsageError,
    add_job_options,
    emit_result,
    fail,
    load_identity,
    read_job,
)
from pyphase.errors import NetworkError, QuorumError, UnverifiedOutput
from pyphase.limits import parse_size

EPILOG_SUBMIT = (
    """\
The job runs on a peer (given with --peer, else found on the LAN) and its receipt is verified
(signature, hashes, nonce, signer = the peer the transport authenticated) before the command succeeds.
Its output is printed as the node streams it (not with --json or --replicas, which print it once
verified); if the receipt then fails to verify, or the peer breaks off, the command says UNVERIFIED
OUTPUT on stderr and exits 1. On a terminal, stderr shows where the job is (connecting, offered,
accepted, running with the time so far, verifying); nothing of that when stderr is piped or with --json.
A timeout, a reject, a dropped connection or a bad receipt before any output was shown sends the job
to another peer.
--socks-proxy HOST:PORT (default: $PHASE_SOCKS_PROXY; --socks-proxy '' for none) sends every
connection through that SOCKS5 proxy, e.g. Tor. It fails closed: nothing is ever sent directly, a
proxy that is down fails the job, and LAN discovery is refused, so name peers with --peer. Their
hosts may be names the proxy resolves (PEERID@xxxx.onion:7465); this machine makes no DNS query.
--timeout is the job's own limit; a peer gets that plus 5 s to answer before the job moves on
(--timeout 0 asks for no limit, which a node with a timeout ceiling, 60 s by default, refuses).
"""
    + LIMITS_HELP
    + EXIT_HELP.replace("Usage errors exit 2.", "Usage errors exit 2;")
    + """
  69 when no peer could run it (each peer's reason on stderr, or in the --json document);
  1 when replicas disagree with no majority, or when output shown as it came is not verified.
examples:
  phase submit hello.wasm --input "Hello, World" --peer PEERID@127.0.0.1:7465 --receipt r.json
  phase submit job.wasm --input-file data.bin --replicas 3 --json
  phase submit hello.wasm --socks-proxy 127.0.0.1:9050 --peer PEERID@xxxx.onion:7465
"""
)


def _client(args: argparse.Namespace) -> Any:
    from pyphase import Client
    from pyphase.net.addresses import resolve_socks_proxy
    from pyphase.net.client import discovery_refused

    proxy = resolve_socks_proxy(args.socks_proxy)
    if not args.peer and proxy is not None:  # a usage error, as in 'phase peers': name the peers
        raise ValueError(discovery_refused(proxy))
    identity = load_identity(args.identity) if getattr(args, "identity", None) else None
    return Client(
        peers=args.peer or None,
        identity=identity,
        discover_timeout=args.discover_timeout,
        socks_proxy=proxy or "",
        dht_bootstrap=args.dht_bootstrap,
    )  # resolved above: "" keeps Client from reading the variable again


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        module, limits, env, job_input = read_job(args)
    except UsageError as exc:
        return fail(str(exc), exc.code)
    if args.replicas < 1 or args.retries < 0:
        return fail("--replicas must be at least 1 and --retries at least 0")
    try:
        client = _client(args)
    except ValueError as exc:
        return fail(str(exc))
    from pyphase.cli.progress import Progress

    streamed = args.replicas == 1 and not args.json
    progress = Progress(enabled=False if args.json else None)
    try:
        with progress:
            result = client.submit(
                module,
                job_input,
                args=args.arg,
                env=env,
                entry=args.entry,
                limits=limits,
                retries=args.retries,
                replicas=args.replicas,
                deterministic=args.deterministic,
                dirs=args.dirs,
                out=args.out,
                requires={"runtime": args.engine} if args.engine else None,
                on_output=progress.output if streamed else None,
                on_progress=progress,
                **({"disk_bytes": parse_size(args.disk)} if args.disk else {}),
                **({"files": args.files} if args.files is not None else {}),
            )
    except UnverifiedOutput as exc:
        if args.json:
            _network_failure(exc, True)
        else:
            print(f"\nphase: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except QuorumError as exc:
        if args.receipt:
            Path(args.receipt).write_text(json.dumps(exc.receipts, indent=2, sort_keys=True) + "\n")
        _network_failure(exc, args.json, groups=exc.groups)
        return EXIT_QUORUM
    except NetworkError as exc:
        _network_failure(exc, args.json)
        return EXIT_NETWORK
    except (ValueError, OSError) as exc:  # a directory that cannot be sent, an --out that is not empty
        return fail(str(exc))
    finally:
        client.close()
    for peer in result.dissent:
        print(f"phase: warning: peer {peer} returned a different output (outvoted)", file=sys.stderr)
    extra: dict[str, Any] = dict(
        peer=result.peer, dissent=list(result.dissent), attempts=[list(a) for a in result.attempts]
    )
    if args.replicas > 1:
        extra["receipts"] = list(result.receipts)
    return emit_result(result, args, result.receipt, extra, streamed=streamed)


def _network_failure(exc: NetworkError, as_json: bool, groups: dict[str, list[str]] | None = None) -> None:
    """Say why no peer ran the job: the summary, then each peer's reason on its own line (or one JSON document)."""
    from pyphase.errors import NoPeers, describe_attempts

    summary = str(exc).split(": ", 1)[0] if exc.attempts else str(exc)
    if as_json:
        status = "quorum" if groups is not None else "no_peers" if isinstance(exc, NoPeers) else "network_error"
        if isinstance(exc, UnverifiedOutput):
            status = "unverified_output"
        doc: dict[str, Any] = {
            "status": status,
            "message": summary,
            "attempts": [{"peer": peer, "why": why} for peer, why in exc.attempts],
        }
        if groups is not None:
            doc["groups"] = groups
        print(json.dumps(doc, sort_keys=True))
        return
    print(f"phase: {summary}", file=sys.stderr)
    for line in describe_attempts(exc.attempts, full_ids=True):
        print(f"  {line}", file=sys.stderr)
    for digest, peers in (groups or {}).items():
        print(f"  {digest}: {', '.join(peers)}", file=sys.stderr)


def cmd_peers(args: argparse.Namespace) -> int:
    from pyphase.net.addresses import resolve_socks_proxy
    from pyphase.net.client import discovery_refused

    try:
        proxy = resolve_socks_proxy(args.socks_proxy)
    except ValueError as exc:
        return fail(str(exc))
    if not args.peer and proxy is not None:
        return fail(discovery_refused(proxy))
    if args.dht and not args.peer:
        from pyphase.cli.dht import dht_addresses

        try:
            args.peer = dht_addresses(args.dht_bootstrap, args.discover_timeout)
        except (ValueError, RuntimeError, OSError) as exc:
            return fail(f"the DHT: {exc}", 1)
        if not args.peer:
            print("no peers found in the DHT", file=sys.stderr)
            return 1
    if not args.peer:
        # listing is the point here: browse until answers stop coming (or --discover-timeout), not the first
        from pyphase.net.discovery import discover

        try:
            args.peer = [p.address for p in discover(args.discover_timeout, settle=0.5)]
        except ImportError as exc:
            return fail(f"LAN discovery needs the zeroconf package ({exc})", EXIT_FAILED)
        if not args.peer:
            print("no peers found", file=sys.stderr)
            return 1
    try:
        client = _client(args)
    except ValueError as exc:
        return fail(str(exc))
    try:
        caps = client.capabilities(timeout=args.wait)
        failures = client.failures()
    finally:
        client.close()
    rows = []
    for address, c in caps.items():
        row: dict[str, Any] = {"address": address, "reachable": c is not None}
        if c is None:
            row["error"] = failures.get(address) or f"no answer within --wait {args.wait:g} s"
        if c:
            row.update(
                {
                    k: c.get(k)
                    for k in (
                        "arch",
                        "cores",
                        "runtime",
                        "runtime_version",
                        "executor",
                        "max_limits",
                        "load",
                        "cached_modules",
                        "accepting",
                    )
                }
            )
        rows.append(row)
    code = EXIT_NETWORK if any(not row["reachable"] for row in rows) else 0
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return code
    if not rows:
        print("no peers found", file=sys.stderr)
        return EXIT_FAILED
    for row in rows:
        if not row["reachable"]:
            print(f"{row['address']}  unreachable: {row['error']}")
            continue
        load = row.get("load") or {}
        print(
            f"{row['address']}  {row['arch']} {row['runtime']} {row['runtime_version']}  "
            f"{load.get('running', 0)}/{load.get('workers', 0)} busy, {load.get('queued', 0)} queued"
        )
    return code


def register(subparsers: Any) -> None:
    """Add ``submit`` and ``peers`` to the ``phase`` command's sub-parsers."""
    p = subparsers.add_parser(
        "submit",
        help="run a module on a peer and print its verified output",
        description="Run MODULE.wasm on a Phase node and print its output once the node's signed receipt verifies.",
        epilog=EPILOG_SUBMIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("module", metavar="MODULE.wasm")
    add_job_options(p)
    add_dir_options(
        p,
        "send directory HOST (as a content-addressed tree; the job may change its copy)",
        "send directory HOST read-only",
    )
    p.add_argument(
        "--out", metavar="DIR", help="write the files the job created or changed (its output tree) to DIR, new or empty"
    )
    p.add_argument(
        "--disk",
        metavar="SIZE",
        help="the most its writable directories may hold, input copies included, in 4 KiB blocks: a write past it "
        "fails with EDQUOT and the job ends output_limit (default 256MiB)",
    )
    p.add_argument(
        "--files",
        type=int,
        metavar="N",
        help="the most entries (files, directories, symlinks) its writable directories may hold (default 10000)",
    )
    _peer_options(p)
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="K",
        help="run on K distinct peers (deterministic mode) and accept the majority output",
    )
    p.add_argument("--retries", type=int, default=3, metavar="N", help="further peers to try after a failure")
    p.add_argument(
        "--engine",
        choices=("wasm3", "wasmtime"),
        help="only peers running this engine take the job (requires.runtime); default: the node's auto "
        "(with --replicas: wasm3, on which replicas agree byte for byte)",
    )
    p.add_argument("--identity", metavar="FILE", help="client identity (default: a fresh one per run)")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser(
        "peers",
        help="list Phase nodes and their capabilities",
        description="Find nodes (on the LAN with mDNS, or those given with --peer) and "
        "show their capabilities and load.",
        epilog="exit status: 0 when every peer listed answered; 69 when one did not (its "
        "reason is on its line, or in 'error' with --json); 1 when none was found.",
    )
    _peer_options(p)
    p.add_argument(
        "--dht",
        action="store_true",
        help="list the nodes found through the Mainline DHT's "
        "rendezvous (each proven by its signed record) instead of the LAN",
    )
    p.add_argument("--wait", type=float, default=1.0, metavar="SECONDS", help="how long to wait for answers")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_peers)


def _peer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="ADDR",
        help="PEERID@HOST:PORT of a node, or a bare PEERID found through the DHT (repeatable); "
        "none: discover on the LAN, then the DHT",
    )
    p.add_argument(
        "--dht-bootstrap",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="DHT node to join through (repeatable; default: $PHASE_DHT_BOOTSTRAP, else libtorrent's Mainline router)",
    )
    p.add_argument(
        "--discover-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long to look for nodes on the LAN (default 1)",
    )
    p.add_argument(
        "--socks-proxy",
        default=None,
        metavar="HOST:PORT",
        help="connect only through this SOCKS5 proxy, e.g. Tor's 127.0.0.1:9050 (default: "
        "$PHASE_SOCKS_PROXY; '' for none). Fails closed: never connects directly, refuses LAN "
        "discovery (name peers with --peer); peer host names are resolved by the proxy (.onion works)",
    )
