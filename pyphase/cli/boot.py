"""``phase boot``: release keys, signed boot manifests and the artifact server.

:func:`pyphase.cli.build_parser` calls :func:`register`; ``python -m pyphase.boot`` runs the same commands alone.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pyphase.boot import keys
from pyphase.boot.dht import RELEASE_PUB_PATH, BootAnnouncer, boot_info_hash, store_release_key
from pyphase.boot.errors import BootError
from pyphase.boot.manifest import ARCHES, load_manifest, make_boot_manifest, sign_manifest, verify_manifest
from pyphase.boot.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_MIN_RATE,
    DEFAULT_TIMEOUT,
    ArtifactServer,
)
from pyphase.boot.store import ArtifactStore
from pyphase.errors import PhaseError
from pyphase.identity import default_home
from pyphase.net.addresses import split_hostport

_DURATION_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    m = _DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 3600, 90m, 12h, 30d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _listen(text: str) -> tuple[str, int]:
    try:
        return split_hostport(text, default_port=None, default_host="127.0.0.1")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


def _cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out) if args.out else default_home() / "release.key"
    identity, pub = keys.generate(path, overwrite=args.force)
    print(f"release key:        {path} (secret, mode 0600: keep it offline)")
    print(f"release public key: {pub} (bake into stage 1: make -C initramfs RELEASE_PUB={Path(pub).resolve()})")
    print(keys.public_key_text(identity.public_key), end="")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    secret = keys.load_secret_key(args.key)
    store = ArtifactStore(args.store)
    kernel = store.add_file(args.kernel)
    initramfs = store.add_file(args.initramfs)
    now = int(time.time())
    expires_at = args.expires_at if args.expires_at is not None else now + args.expires_in
    document = make_boot_manifest(
        kernel, initramfs, args.cmdline, release=args.release, expires_at=expires_at, created_at=now, arch=args.arch
    )
    signed = sign_manifest(document, secret.signing_key)
    path = store.write_manifest(signed)
    (store.root / RELEASE_PUB_PATH).write_text(keys.public_key_text(secret.public_key))  # what the store announces
    print(f"kernel    {kernel.hash} {kernel.size}")
    print(f"initramfs {initramfs.hash} {initramfs.size}")
    print(
        f"manifest  {path} (release {args.release}, expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires_at))})"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    public_key = keys.load_public_key(args.pub)
    document = load_manifest(args.manifest)
    manifest = verify_manifest(document, public_key, min_release=args.min_release)
    print(f"signature ok: release {manifest.release}, {manifest.arch}, expires {manifest.expires_at}")
    if args.store:
        store = ArtifactStore(args.store)
        for role, artifact in manifest.artifacts().items():
            artifact.check_file(store.path_for(artifact.hex))
            print(f"{role} ok: {artifact.hash} {artifact.size}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    root = Path(args.store)
    if not root.is_dir():
        raise BootError(f"{root} is not a directory (create it with 'phase boot sign --store {root} ...')")
    good = ArtifactStore(root).scan()
    announce_dht = args.dht or args.dht_bootstrap is not None
    info_hash = boot_info_hash(store_release_key(root, args.release_pub)) if announce_dht else b""
    server = ArtifactServer(
        root,
        args.listen[0],
        args.listen[1],
        max_connections=args.max_connections,
        max_per_address=args.max_per_address,
        min_rate=args.min_rate,
        timeout=args.timeout,
        quiet=args.quiet,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    announcer = None
    dht: Any = None
    on_dht: BootAnnouncer | None = None
    with server:
        try:
            if args.mdns:
                from pyphase.boot.mdns import announce_source

                announcer = announce_source(server.port, args.listen[0], args.mdns_interfaces)
            if announce_dht:
                from pyphase.net.dht import Dht, bootstrap_from_env, maps_ports

                host = args.listen[0]
                listen = args.dht_listen or (f"[{host}]:0" if ":" in host else f"{host}:0")
                mapping = maps_ports(listen, args.upnp)
                woken: list[BootAnnouncer] = []

                def on_event(event: str, **fields: Any) -> None:
                    _print_event(event, **fields)
                    if event.startswith("port_mapping_") and fields.get("what") == BootAnnouncer.MAPPING_NAME:
                        for a in woken:
                            a.wake()  # announce the external port now

                dht = Dht(listen, bootstrap_from_env(args.dht_bootstrap), port_mapping=mapping, on_event=on_event)
                on_dht = BootAnnouncer(dht, info_hash, server.port, _print_event)
                woken.append(on_dht)
                on_dht.start()
            print(
                f"serving {len(good)} artifact(s) from {root} at {server.url} (read-only; Ctrl-C stops)"
                + (f"; announced as {announcer.name} ({', '.join(announcer.addresses)})" if announcer else "")
                + (f"; on the DHT at {dht.listen_host}:{dht.port} under {info_hash.hex()}" if dht else ""),
                flush=True,
            )
            while not stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if on_dht is not None:
                on_dht.close()
            if dht is not None:
                dht.close()
            if announcer is not None:
                announcer.close()
    return 0


def _print_event(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``boot`` command and its subcommands to a parent CLI."""
    boot = subparsers.add_parser(
        "boot",
        help="Phase Boot: release keys, signed boot manifests, artifact server",
        description="Make release keys, sign boot manifests that stage 1 verifies before kexec, "
        "and serve boot artifacts by hash over HTTP.",
    )
    commands = boot.add_subparsers(dest="boot_command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "keygen",
        help="create a release signing key",
        description="Create an Ed25519 release key (secret file, mode 0600) and "
        "PATH.pub, the public half that stage 1 bakes in.",
    )
    p.add_argument("--out", metavar="PATH", help="secret key file (default: $PHASE_HOME/release.key)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(boot_func=_cmd_keygen)

    p = commands.add_parser(
        "sign",
        help="add kernel + node image to a store and sign a boot manifest",
        description="Copy the kernel and node initramfs into STORE under their sha256, "
        "then write STORE/boot/manifest.json signed with the release key.",
    )
    p.add_argument("--key", required=True, metavar="PATH", help="release secret key (from 'phase boot keygen')")
    p.add_argument("--kernel", required=True, metavar="PATH", help="kernel image (bzImage) for stage 2")
    p.add_argument("--initramfs", required=True, metavar="PATH", help="stage-2 node initramfs")
    p.add_argument(
        "--cmdline",
        default="console=ttyS0 panic=-1",
        help="stage-2 kernel command line (printable ASCII; default: %(default)r)",
    )
    p.add_argument(
        "--release",
        required=True,
        type=int,
        metavar="N",
        help="release number; stage 1 can refuse releases below a floor",
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--expires-in",
        type=_duration,
        default=30 * 86400,
        metavar="DURATION",
        help="validity, e.g. 12h or 30d (default 30d)",
    )
    when.add_argument("--expires-at", type=int, metavar="UNIX", help="absolute expiry in Unix seconds")
    p.add_argument("--arch", choices=ARCHES, default="x86_64")
    p.add_argument("--store", required=True, metavar="DIR", help="artifact store directory (created if needed)")
    p.set_defaults(boot_func=_cmd_sign)

    p = commands.add_parser("verify", help="check a boot manifest (and its artifacts) as stage 1 would")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--pub", required=True, metavar="PATH", help="release public key file")
    p.add_argument("--store", metavar="DIR", help="also check the artifacts in this store")
    p.add_argument("--min-release", type=int, default=0, metavar="N")
    p.set_defaults(boot_func=_cmd_verify)

    p = commands.add_parser(
        "serve",
        help="serve a store's artifacts by hash over HTTP (read-only)",
        description="Serve STORE over HTTP: GET/HEAD /sha256/<hex> and /boot/manifest.json, "
        "with range requests. Artifacts are served only if their bytes "
        "match their names.",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8080; use 0.0.0.0:8080 to serve a LAN)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections at once (default %(default)s); beyond it, 503 at once",
    )
    p.add_argument(
        "--max-per-address",
        type=int,
        default=DEFAULT_MAX_PER_ADDRESS,
        metavar="N",
        help="connections from one source address (default %(default)s)",
    )
    p.add_argument(
        "--min-rate",
        type=int,
        default=DEFAULT_MIN_RATE,
        metavar="BYTES",
        help="bytes per second a download must keep up, after 10 s (default %(default)s)",
    )
    p.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS", help="per-connection socket timeout"
    )
    p.add_argument("--quiet", action="store_true", help="do not log requests")
    p.add_argument(
        "--mdns",
        action="store_true",
        help="announce the source on the LAN as _phase-boot._tcp (for stage 1 in phase.mode=local)",
    )
    p.add_argument(
        "--mdns-interfaces",
        metavar="LIST",
        default="all",
        help='"all" (default) or comma-separated IPv4 addresses to announce on',
    )
    p.add_argument(
        "--dht",
        action="store_true",
        help="announce the source on the Mainline DHT under the release key's info-hash "
        "(for stage 1 in phase.mode=internet; bootstrap: $PHASE_DHT_BOOTSTRAP or libtorrent's default router)",
    )
    p.add_argument(
        "--dht-bootstrap",
        metavar="HOST:PORT,...",
        help="DHT nodes to join through (implies --dht)",
    )
    p.add_argument("--dht-listen", metavar="IP:PORT", help="the DHT's UDP socket (default: the --listen IP, any port)")
    p.add_argument(
        "--no-upnp",
        dest="upnp",
        action="store_false",
        help="with the DHT on, do not ask the router (UPnP-IGD, NAT-PMP) to forward the HTTP port and the DHT's; "
        "by default both are mapped unless the DHT listens on loopback, and the external port is announced",
    )
    p.add_argument(
        "--release-pub",
        metavar="PATH",
        help=f"release public key to announce under (default STORE/{RELEASE_PUB_PATH}, written by 'phase boot sign'); "
        "the store's manifest must verify with it",
    )
    p.set_defaults(boot_func=_cmd_serve)

    boot.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``boot`` subcommand; errors become one line on stderr and exit status 1."""
    try:
        return int(args.boot_func(args))
    except (PhaseError, OSError) as exc:
        print(f"phase boot {args.boot_command}: error: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyphase", description="Phase Boot tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    args = parser.parse_args(["boot", *(sys.argv[1:] if argv is None else argv)])
    return run(args)
