"""The ``phase`` command: run jobs locally or on the network, verify receipts, manage keys, make boot media.

One module per group of commands, each adding its own to the parser here: :mod:`pyphase.cli.local`
(``run``, ``verify``, ``keygen``, ``id``), :mod:`pyphase.cli.net` (``submit``, ``peers``),
:mod:`pyphase.cli.dht` (``dht ...``),
:mod:`pyphase.cli.boot` (``boot ...``), :mod:`pyphase.cli.history` (``jobs``, ``receipts``).
:mod:`pyphase.cli.jobs` holds what they share: the job options,
reading a job, printing its outcome and the exit codes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyphase.cli import boot, dht, history, local, net
from pyphase.cli.jobs import EXIT_USAGE, call

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``phase`` command line."""
    parser = argparse.ArgumentParser(
        prog="phase",
        description="Run sandboxed WebAssembly (WASI) jobs locally or on the Phase network, with signed receipts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    local.register(sub)
    net.register(sub)
    dht.register(sub)
    history.register(sub)
    boot.register(sub)
    return parser


def _version() -> str:
    from pyphase import RUNTIME_NAME, RUNTIME_VERSION, __version__

    return f"{__version__} ({RUNTIME_NAME} {RUNTIME_VERSION})"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``phase`` with ``argv`` (default ``sys.argv[1:]``) and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return call(args)


if __name__ == "__main__":
    sys.exit(main())
