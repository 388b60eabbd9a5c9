"""The ``phase`` command: run jobs locally or on the network, verify receipts, manage keys, make boot media.

One module per group of commands, each adding its own to the parser here: :mod:`pyphase.cli.local`
(``run``, ``verify``, ``keygen``, ``id``), :mod:`pyphase.cli.net` (``submit``, ``peers``),
:mod:`pyphase.cli.dht` (``dht ...``),
:mod:`pyphase.cli.boot` (``boot ...``), :mod:`pyphase.cli.history` (``jobs``, ``receipts``).
:mod:`pyphase.cli.jobs` holds what they share: the job options,
reading a job, printing its outcome and the exit codes.

A command line imports only the module of the command it names: ``phase run`` never loads the boot server, asyncio
or the HTTP stack that ``phase boot`` needs (BENCHMARKS.md, "Start-up"). ``phase --help``, ``phase`` alone and a
command line that names no known command build the whole parser, so help and usage errors list every command.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from typing import NoReturn, Sequence

__all__ = ["COMMAND_MODULES", "build_parser", "console", "main"]

#: The module under ``pyphase.cli`` that adds each command (tests/test_cli_startup.py checks it against them).
COMMAND_MODULES = {
    "run": "local",
    "verify": "local",
    "keygen": "local",
    "id": "local",
    "submit": "net",
    "peers": "net",
    "dht": "dht",
    "jobs": "history",
    "receipts": "history",
    "boot": "boot",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``phase`` command line: every command, or only the group that adds ``command`` when it is one."""
    parser = argparse.ArgumentParser(
        prog="phase",
        description="Run sandboxed WebAssembly (WASI) jobs locally or on the Phase network, with signed receipts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else dict.fromkeys(COMMAND_MODULES.values())
    for group in groups:
        importlib.import_module(f"pyphase.cli.{group}").register(sub)
    return parser


def _version() -> str:
    from pyphase import __version__
    from pyphase._core import RUNTIME_NAME, RUNTIME_VERSION  # what pyphase.runtime says, without loading it

    return f"{__version__} ({RUNTIME_NAME} {RUNTIME_VERSION})"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | None:
    """The parsed command line (None: no command given, the help printed)."""
    words = list(sys.argv[1:] if argv is None else argv)
    # the command is the first word (the top-level options take no value): anything else gets the whole parser
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
    if not getattr(args, "func", None):
        parser.print_help()
        return None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``phase`` with ``argv`` (default ``sys.argv[1:]``) and return its exit status."""
    args = _parse(argv)
    from pyphase.cli.jobs import EXIT_USAGE, call  # loaded already: every group's module imports it

    return EXIT_USAGE if args is None else call(args)


def console() -> NoReturn:
    """The ``phase`` executable (and ``python -m pyphase``): :func:`main` on ``sys.argv``, then exit.

    A process that reads one command line and exits can spare the garbage collector work a library must not:
    no collection while the command line is read (its imports make many objects and little garbage), and what is
    alive before the command runs, and again when it ends, is frozen (:func:`gc.freeze`), so neither the command's
    collections nor the interpreter's last ones at exit walk through it again (they took 20-40 ms of a 0.2 s
    ``phase run``; BENCHMARKS.md, "Start-up"). Nothing is skipped: atexit handlers, flushing and finalizers run.
    """
    gc.disable()
    try:
        args = _parse(None)
    finally:
        gc.freeze()
        gc.enable()
    from pyphase.cli.jobs import EXIT_USAGE, call

    if args is None:
        sys.exit(EXIT_USAGE)
    code = call(args)
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()
