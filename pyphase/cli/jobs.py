"""What every job command of ``phase`` shares: the job options, reading a job, printing its outcome, exit codes.

Uses only the public Python API. Exit codes: a job's own exit code when it ran to completion;
otherwise one per status (see ``STATUS_EXIT_CODES``); 1 for a failed verification, 2 for usage errors.
This module is the one place that maps outcomes to exit codes (``run``, ``submit`` and their ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pyphase.errors import LimitsError, PhaseError
from pyphase.identity import Identity, default_identity_path
from pyphase.limits import (
    DEFAULT_LIMITS,
    MAX_MEMORY_BYTES,
    MAX_OUTPUT_BYTES,
    WASM_PAGE,
    Limits,
    format_duration_ms,
    format_size,
    parse_duration_ms,
    parse_size,
)
from pyphase.preopen import Preopen

STATUS_EXIT_CODES = {
    "trap": 134,
    "timeout": 124,
    "fuel_exhausted": 152,
    "memory_limit": 137,
    "output_limit": 141,
    "invalid_module": 65,
    "crashed": 139,
    "rejected": 75,
}
EXIT_USAGE = 2  # a command line that cannot be acted on
EXIT_FAILED = 1  # a failed verification, or an error that is not a job's outcome
EXIT_NETWORK = 69  # EX_UNAVAILABLE: no peer could run the job
EXIT_QUORUM = 1  # replicas disagreed: like a failed verification

LIMITS_HELP = """\
units: a SIZE is a number and a unit: B; KB, MB, GB (powers of 1000); KiB, MiB, GiB
  (powers of 1024); e.g. 64MiB = 67,108,864 bytes, 64MB = 64,000,000. A DURATION takes ms, s,
  m (minutes) or h, e.g. 500ms, 2s. A bare number (64, 5) or an ambiguous unit (64M, 1k) is
  refused with the choices. Linear memory comes in 64 KiB pages: --memory is rounded down to
  whole pages (said on stderr when it is). --timeout 0 and --fuel 0 mean no limit.
"""
EXIT_HELP = """\
exit status: the module's own exit code when it ran to completion; otherwise
{codes}
  (invalid_module also for a file that is not a module: .wat, C source, empty). Usage errors exit 2.""".format(
    codes=textwrap.fill(
        ", ".join(f"{status} {code}" for status, code in STATUS_EXIT_CODES.items()),
        width=80,
        initial_indent="  ",
        subsequent_indent="  ",
    )
)
EPILOG_RUN = (
    LIMITS_HELP
    + EXIT_HELP
    + """
examples:
  phase run examples/hello/hello.wasm --input "Hello, World"
  phase run job.wasm --input-file data.bin --memory 128MiB --timeout 5s --receipt r.json
  echo text | phase run job.wasm --stdin --json
  phase run wc.wasm --ro-dir ./data::/data --dir ./out::/out --arg /data
directories: --dir HOST[::GUEST] preopens HOST read-write at GUEST (default: the same
  path), --ro-dir read-only; paths the module names never resolve outside them.
"""
)


def fail(message: str, code: int = EXIT_USAGE) -> int:
    """Print ``phase: message`` on stderr and return ``code`` (the command's exit status)."""
    print(f"phase: {message}", file=sys.stderr)
    return code


def _write_stdout(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def print_output(stream: int, data: bytes) -> None:
    """A job's output as it writes: stdout (1) or stderr (2) here, unbuffered like the module's own descriptors."""
    out = sys.stdout if stream == 1 else sys.stderr
    out.flush()
    out.buffer.write(data)
    out.buffer.flush()


def _read_input(args: argparse.Namespace) -> bytes:
    if args.input is not None:
        return str(args.input).encode("utf-8")
    if args.input_file is not None:
        return Path(args.input_file).read_bytes()
    if args.stdin:
        return sys.stdin.buffer.read()
    return b""


def add_job_options(parser: argparse.ArgumentParser, defaults: Limits = DEFAULT_LIMITS) -> None:
    """Options shared by ``run`` and ``submit``: input, arguments, environment and limits, whose ``defaults`` differ
    (``run``: :data:`~pyphase.limits.LOCAL_LIMITS`; ``submit``: a node's)."""
    parser.set_defaults(limit_defaults=defaults)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="TEXT", help="job input (stdin of the module) as text")
    src.add_argument("--input-file", metavar="F", help="job input read from a file")
    src.add_argument("--stdin", action="store_true", help="job input read from this command's stdin")
    parser.add_argument("--arg", action="append", default=[], metavar="A", help="argument after argv[0] (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable (repeatable)")
    parser.add_argument("--entry", default="_start", help="exported function to call (default: _start)")
    parser.add_argument(
        "--memory",
        default=None,
        metavar="SIZE",
        help=f"linear memory limit, e.g. 64MiB or 64MB (default {format_size(defaults.memory_bytes)}"
        + (", wasm32's maximum)" if defaults.memory_bytes == MAX_MEMORY_BYTES else ")"),
    )
    parser.add_argument(
        "--fuel",
        type=int,
        default=None,
        metavar="N",
        help="fuel limit in metering ticks (function entries + loop iterations); 0 or default: no limit",
    )
    parser.add_argument(
        "--timeout",
        default=None,
        metavar="DURATION",
        help=f"the job's wall-clock limit, e.g. 2s or 500ms; 0: no limit (default {describe_default(defaults.timeout_ms)})",
    )
    parser.add_argument(
        "--output-limit",
        default=None,
        metavar="SIZE",
        help=f"stdout+stderr limit (default {format_size(defaults.output_bytes)}"
        + (", all a job can produce)" if defaults.output_bytes == MAX_OUTPUT_BYTES else ")"),
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="derive clocks and random from the job, so every run gives the same bytes",
    )
    parser.add_argument("--receipt", metavar="FILE", help="write the signed receipt to FILE")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the job's output")


def _dir_option(readonly: bool) -> Callable[[str], Preopen]:
    def parse(spec: str) -> Preopen:
        try:
            return Preopen.parse(spec, readonly)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_dir_options(parser: argparse.ArgumentParser, rw_help: str, ro_help: str) -> None:
    """``--dir`` and ``--ro-dir HOST[::GUEST]`` (wasmtime's spelling), shared by ``run`` and ``submit``."""
    parser.add_argument(
        "--dir",
        dest="dirs",
        action="append",
        default=[],
        type=_dir_option(False),
        metavar="HOST[::GUEST]",
        help=f"{rw_help}, seen at GUEST (repeatable)",
    )
    parser.add_argument(
        "--ro-dir",
        dest="dirs",
        action="append",
        type=_dir_option(True),
        metavar="HOST[::GUEST]",
        help=f"{ro_help}, seen at GUEST (repeatable)",
    )


def describe_default(timeout_ms: int) -> str:
    return "none" if timeout_ms == 0 else format_duration_ms(timeout_ms).replace(" ", "")


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The job's limits from ``--memory``, ``--fuel``, ``--timeout`` and ``--output-limit``; an error names the flag."""
    changes: dict[str, int] = {}
    for flag, field, value, parse in (
        ("--memory", "memory_bytes", args.memory, parse_size),
        ("--timeout", "timeout_ms", getattr(args, "timeout", None), parse_duration_ms),
        ("--output-limit", "output_bytes", args.output_limit, parse_size),
    ):
        if value is not None:
            try:
                changes[field] = parse(value)
            except LimitsError as exc:
                raise LimitsError(f"{flag}: {exc}") from None
    if args.fuel is not None:
        changes["fuel"] = args.fuel
    try:
        return getattr(args, "limit_defaults", DEFAULT_LIMITS).replace(**changes)
    except LimitsError as exc:
        flags = {
            "memory_bytes": "--memory",
            "timeout_ms": "--timeout",
            "output_bytes": "--output-limit",
            "fuel": "--fuel",
        }
        name = next((f for f in flags if str(exc).startswith(f)), "")
        raise LimitsError(f"{flags[name]}: {exc}" if name else str(exc)) from None


def limit_notes(args: argparse.Namespace, limits: Limits) -> list[str]:
    """What the job will get where that is not plainly what was typed: memory rounded down to whole pages,
    and 0 meaning no limit."""
    notes = []
    if args.memory is not None and limits.memory_bytes % WASM_PAGE:
        pages = limits.memory_bytes // WASM_PAGE
        notes.append(
            f"--memory {args.memory} is {limits.memory_bytes:,} bytes; linear memory comes in 64 KiB pages, "
            f"so the job gets {pages} page{'s' if pages != 1 else ''} ({format_size(pages * WASM_PAGE)})"
        )
    if getattr(args, "timeout", None) is not None and limits.timeout_ms == 0:
        notes.append(f"--timeout {args.timeout}: no wall-clock limit")
    if args.fuel == 0:
        notes.append("--fuel 0: no fuel limit")
    return notes


def env_from_args(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


class UsageError(Exception):
    """A command line that cannot be acted on: the message is shown and the command exits ``code`` (2; 65 for
    a file that is not a module)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def read_job(args: argparse.Namespace) -> tuple[bytes, Limits, dict[str, str], bytes]:
    """Module bytes, limits, environment and input named by the job options (``run`` and ``submit``)."""
    from pyphase.runtime import not_wasm_hint

    path = Path(args.module)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.module}: {exc.strerror}") from None
    hint = not_wasm_hint(data)
    if hint is not None:  # said here, before any sandbox or network: with the file's own name
        named = hint
        if hint.startswith(("this is WebAssembly text", "this looks like C source")):  # the file is the source
            named = (
                hint.replace("job.wat", path.name).replace("job.c", path.name).replace("job.wasm", f"{path.stem}.wasm")
            )
        raise UsageError(f"invalid_module: {args.module}: {named}", STATUS_EXIT_CODES["invalid_module"])
    try:
        limits = limits_from_args(args)
        for note in limit_notes(args, limits):
            print(f"phase: note: {note}", file=sys.stderr)
        return data, limits, env_from_args(args.env), _read_input(args)
    except (LimitsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read input: {exc.strerror}") from None


def exit_code(result: Any) -> int:
    """The exit status for a job's outcome: its own exit code when it ran to completion, else its status's."""
    if result.status == "ok":
        return int(result.exit_code) & 0xFF
    return STATUS_EXIT_CODES.get(result.status, 1)


def emit_result(
    result: Any,
    args: argparse.Namespace,
    receipt: dict[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
    streamed: bool = False,
) -> int:
    """Print a job's outcome as the CLI promises and return the exit code. ``extra``: more ``--json`` fields;
    ``streamed``: the output was printed as the job wrote it (only the outcome is left to say)."""
    if receipt is not None and args.receipt:
        Path(args.receipt).write_text(json.dumps(receipt, indent=2, sort_keys=True) + "\n")
    if args.json:
        doc = result.to_json()
        if receipt is not None:
            doc["receipt"] = receipt
        doc.update(extra or {})
        print(json.dumps(doc, sort_keys=True))
    else:
        if not streamed:
            _write_stdout(result.stdout)
        if result.stderr and not streamed:
            sys.stderr.buffer.write(result.stderr)
            sys.stderr.flush()
        if result.status != "ok":
            print(f"phase: {result.status}: {result.message}", file=sys.stderr)
    return exit_code(result)


def load_identity(path: str | None) -> Identity:
    """The user's identity, created at the default path on first use (announced on stderr)."""
    target = Path(path) if path else default_identity_path()
    if not target.exists():
        identity = Identity.generate()
        identity.save(target)
        print(f"phase: created identity {identity.peer_id} at {target}", file=sys.stderr)
        return identity
    return Identity.load(target)


def call(args: argparse.Namespace) -> int:
    """Run a parsed command (``args.func``); errors that are not a job's outcome become one line on stderr
    and exit 1, an interrupt exits 130."""
    try:
        code: int = args.func(args)
        return code
    except PhaseError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
