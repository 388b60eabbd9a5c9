"""The ``phase`` command: run jobs locally or on the network, verify receipts, manage keys.

Uses only the public Python API. Exit codes: a job's own exit code when it ran to completion;
otherwise one per status (see ``STATUS_EXIT_CODES``); 1 for a failed verification, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from pyphase.errors import IdentityError, InvalidModule, LimitsError, PhaseError, VerificationError
from pyphase.identity import Identity, default_identity_path
from pyphase.limits import Limits, parse_duration_ms, parse_size
from pyphase.preopen import Preopen
from pyphase.preopen import check as check_dirs

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

EPILOG_RUN = """\
exit status: the module's own exit code when it ran to completion; otherwise
  trap 134, timeout 124, fuel_exhausted 152, memory_limit 137, output_limit 141,
  invalid_module 65, crashed 139. Usage errors exit 2.
examples:
  phase run examples/hello/hello.wasm --input "Hello, World"
  phase run job.wasm --input-file data.bin --memory 128MiB --timeout 5s --receipt r.json
  echo text | phase run job.wasm --stdin --json
  phase run wc.wasm --ro-dir ./data::/data --dir ./out::/out --arg /data
directories: --dir HOST[::GUEST] preopens HOST read-write at GUEST (default: the same
  path), --ro-dir read-only; paths the module names never resolve outside them.
"""


def _fail(message: str, code: int = 2) -> int:
    print(f"phase: {message}", file=sys.stderr)
    return code


def _write_stdout(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _read_input(args: argparse.Namespace) -> bytes:
    if args.input is not None:
        return str(args.input).encode("utf-8")
    if args.input_file is not None:
        return Path(args.input_file).read_bytes()
    if args.stdin:
        return sys.stdin.buffer.read()
    return b""


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``submit``: input, arguments, environment and limits."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="TEXT", help="job input (stdin of the module) as text")
    src.add_argument("--input-file", metavar="F", help="job input read from a file")
    src.add_argument("--stdin", action="store_true", help="job input read from this command's stdin")
    parser.add_argument("--arg", action="append", default=[], metavar="A", help="argument after argv[0] (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable (repeatable)")
    parser.add_argument("--entry", default="_start", help="exported function to call (default: _start)")
    defaults = Limits()
    parser.add_argument("--memory", default=None, metavar="SIZE",
                        help=f"linear memory limit, e.g. 64MiB (default {defaults.memory_bytes >> 20}MiB)")
    parser.add_argument("--fuel", type=int, default=None, metavar="N",
                        help="fuel limit in metering ticks (function entries + loop iterations); default unlimited")
    parser.add_argument("--timeout", default=None, metavar="DURATION",
                        help=f"wall-clock limit, e.g. 2s or 500ms (default {defaults.timeout_ms // 1000}s)")
    parser.add_argument("--output-limit", default=None, metavar="SIZE",
                        help=f"stdout+stderr limit (default {defaults.output_bytes >> 20}MiB)")
    parser.add_argument("--deterministic", action="store_true",
                        help="derive clocks and random from the job, so every run gives the same bytes")
    parser.add_argument("--receipt", metavar="FILE", help="write the signed receipt to FILE")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the job's output")


def limits_from_args(args: argparse.Namespace) -> Limits:
    changes: dict[str, int] = {}
    if args.memory is not None:
        changes["memory_bytes"] = parse_size(args.memory)
    if args.fuel is not None:
        changes["fuel"] = args.fuel
    if getattr(args, "timeout", None) is not None:
        changes["timeout_ms"] = parse_duration_ms(args.timeout)
    if args.output_limit is not None:
        changes["output_bytes"] = parse_size(args.output_limit)
    return Limits().replace(**changes)


def env_from_args(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


class UsageError(Exception):
    """A command line that cannot be acted on: the message is shown and the command exits 2."""


def read_job(args: argparse.Namespace) -> tuple[bytes, Limits, dict[str, str], bytes]:
    """Module bytes, limits, environment and input named by the job options (``run`` and ``submit``)."""
    try:
        data = Path(args.module).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.module}: {exc.strerror}") from None
    try:
        return data, limits_from_args(args), env_from_args(args.env), _read_input(args)
    except (LimitsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read input: {exc.strerror}") from None


def emit_result(result: Any, args: argparse.Namespace, receipt: dict[str, Any] | None) -> int:
    """Print a job's outcome as the CLI promises and return the exit code."""
    if receipt is not None and args.receipt:
        Path(args.receipt).write_text(json.dumps(receipt, indent=2, sort_keys=True) + "\n")
    if args.json:
        doc = result.to_json()
        if receipt is not None:
            doc["receipt"] = receipt
        print(json.dumps(doc, sort_keys=True))
    else:
        _write_stdout(result.stdout)
        if result.stderr:
            sys.stderr.buffer.write(result.stderr)
            sys.stderr.flush()
        if result.status != "ok":
            print(f"phase: {result.status}: {result.message}", file=sys.stderr)
    if result.status == "ok":
        return int(result.exit_code) & 0xFF
    return STATUS_EXIT_CODES.get(result.status, 1)


def _identity(path: str | None) -> Identity:
    """The user's identity, created at the default path on first use (announced on stderr)."""
    target = Path(path) if path else default_identity_path()
    if not target.exists():
        identity = Identity.generate()
        identity.save(target)
        print(f"phase: created identity {identity.peer_id} at {target}", file=sys.stderr)
        return identity
    return Identity.load(target)


def _dir_option(readonly: bool) -> Callable[[str], Preopen]:
    def parse(spec: str) -> Preopen:
        try:
            return Preopen.parse(spec, readonly)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


NO_PREOPEN_NOTE = ("phase: note: the module looked for a directory and none was given; "
                   "give one with --dir HOST[::GUEST] (or --ro-dir for read-only)")


def cmd_run(args: argparse.Namespace) -> int:
    from pyphase.manifest import job_id, make_manifest
    from pyphase.receipt import make_receipt, timestamp
    from pyphase.runtime import Module, run

    try:
        data, limits, env, job_input = read_job(args)
    except UsageError as exc:
        return _fail(str(exc))
    program = Path(args.module).name
    try:
        module = Module.cached(data)
    except InvalidModule as exc:
        result = None
        message = str(exc)
        if args.json:
            print(json.dumps({"status": "invalid_module", "message": message}))
        else:
            print(f"phase: invalid_module: {message}", file=sys.stderr)
        return STATUS_EXIT_CODES["invalid_module"]
    started = timestamp()
    kwargs: dict[str, Any] = dict(args=args.arg, env=env, entry=args.entry, limits=limits,
                                  deterministic=args.deterministic, program_name=program, dirs=args.dirs)
    try:
        check_dirs(args.dirs)
    except ValueError as exc:
        return _fail(str(exc))
    if args.no_sandbox:
        result = run(module, job_input, **kwargs)
    else:
        from pyphase.sandbox import Sandbox

        with Sandbox(workers=1) as sandbox:
            result = sandbox.run(module, job_input, **kwargs)
    receipt = None
    if args.receipt or args.json:
        manifest = make_manifest(module, job_input, args=args.arg, env=env, entry=args.entry, limits=limits,
                                 deterministic=args.deterministic)
        receipt = make_receipt(result, job_id=job_id(manifest), nonce=manifest["nonce"], limits=limits,
                               identity=_identity(args.identity), started_at=started)
    code = emit_result(result, args, receipt)
    if result.fs_unavailable and not args.dirs:
        print(NO_PREOPEN_NOTE, file=sys.stderr)
    return code


def cmd_verify(args: argparse.Namespace) -> int:
    from pyphase.receipt import verify_receipt

    try:
        receipt = json.loads(Path(args.receipt).read_text("utf-8"))
    except OSError as exc:
        return _fail(f"cannot read {args.receipt}: {exc.strerror}")
    except (ValueError, UnicodeDecodeError) as exc:
        return _fail(f"{args.receipt} is not JSON: {exc}", 1)
    given: dict[str, Any] = {}
    try:
        for name in ("module", "input", "stdout", "stderr"):
            path = getattr(args, name)
            if path is not None:
                given[name] = Path(path).read_bytes()
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}")
    if args.input_text is not None:
        given["input"] = args.input_text.encode("utf-8")
    try:
        verify_receipt(receipt, nonce=args.nonce, signer=args.signer, **given)
    except VerificationError as exc:
        print(f"phase verify: FAILED {args.receipt}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    checked = ["signature", *sorted(given)]
    if args.nonce:
        checked.append("nonce")
    if args.signer:
        checked.append("signer")
    node = receipt["node"]["peer_id"]
    print(f"receipt OK: {receipt['status']} exit {receipt['exit_code']}, signed by {node} "
          f"(checked: {', '.join(checked)})")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    target = Path(args.out) if args.out else default_identity_path()
    identity = Identity.generate()
    try:
        identity.save(target, overwrite=args.force)
    except IdentityError as exc:
        return _fail(str(exc))
    print(identity.peer_id)
    print(f"phase: wrote {target} (mode 0600)", file=sys.stderr)
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    try:
        identity = Identity.load(args.identity or default_identity_path())
    except IdentityError as exc:
        return _fail(str(exc))
    print(identity.peer_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phase",
        description="Run sandboxed WebAssembly (WASI) jobs locally or on the Phase network, with signed receipts.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a module locally and print its output",
                       description="Run MODULE.wasm on this machine in an isolated worker process.",
                       epilog=EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module", metavar="MODULE.wasm")
    add_job_options(p)
    p.add_argument("--dir", dest="dirs", action="append", default=[], type=_dir_option(False), metavar="HOST[::GUEST]",
                   help="let the module read and write directory HOST, seen at GUEST (repeatable)")
    p.add_argument("--ro-dir", dest="dirs", action="append", type=_dir_option(True), metavar="HOST[::GUEST]",
                   help="let the module read directory HOST, seen at GUEST (repeatable)")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run in this process instead of an isolated worker (trusted modules only)")
    p.add_argument("--identity", metavar="FILE", help=f"key that signs the receipt (default {default_identity_path()})")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", help="check a receipt's signature and hashes",
                       description="Check RECEIPT.json: its signature, and the hash of every file given.")
    p.add_argument("receipt", metavar="RECEIPT.json")
    p.add_argument("--module", metavar="F", help="the module file the job ran")
    p.add_argument("--input", metavar="F", help="the input file")
    p.add_argument("--input-text", metavar="TEXT", help="the input, as text")
    p.add_argument("--stdout", metavar="F", help="the stdout bytes received")
    p.add_argument("--stderr", metavar="F", help="the stderr bytes received")
    p.add_argument("--nonce", help="the nonce the client chose")
    p.add_argument("--signer", metavar="PEERID", help="the peer that must have signed it")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("keygen", help="create an Ed25519 identity",
                       description="Create an identity key (mode 0600) and print its peer id.")
    p.add_argument("--out", metavar="FILE", help=f"where to write it (default {default_identity_path()})")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("id", help="print this machine's peer id")
    p.add_argument("--identity", metavar="FILE")
    p.set_defaults(func=cmd_id)

    for module_name in ("pyphase.netcli", "pyphase.boot.cli"):
        register = _optional_register(module_name)
        if register is not None:
            register(sub)
    return parser


def _optional_register(module_name: str) -> Callable[[Any], None] | None:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    register: Callable[[Any], None] = module.register
    return register


def _version() -> str:
    from pyphase import RUNTIME_NAME, RUNTIME_VERSION, __version__

    return f"{__version__} ({RUNTIME_NAME} {RUNTIME_VERSION})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except PhaseError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
