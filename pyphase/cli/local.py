"""``phase run``, ``phase verify``, ``phase keygen`` and ``phase id``: the commands that need no network.

Uses only the public Python API.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pyphase.cli.jobs import (
    add_dir_options,
    EPILOG_RUN,
    STATUS_EXIT_CODES,
    UsageError,
    add_job_options,
    emit_result,
    fail,
    load_identity,
    print_output,
    read_job,
)
from pyphase.errors import IdentityError, InvalidModule, VerificationError
from pyphase.identity import Identity, default_identity_path
from pyphase.limits import LOCAL_LIMITS

if TYPE_CHECKING:
    from pyphase.result import Result
    from pyphase.runtime import OutputCallback, PreparedJob

#: at most this long ``phase run`` waits, after its job, for the compile of a long job's module (:func:`_await_compiles`)
COMPILE_WAIT_S = 120.0
#: a wait for a compile longer than this is announced on a terminal (the job's output is done: say why nothing ends)
COMPILE_NOTE_S = 0.5

NO_PREOPEN_NOTE = (
    "phase: note: the module looked for a directory and none was given; "
    "give one with --dir HOST[::GUEST] (or --ro-dir for read-only)"
)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a module here: its raw bytes go to an isolated worker (validated there, never in this process)."""
    from pyphase.digests import hash_text, sha256_text
    from pyphase.engines import EngineUnavailable
    from pyphase.runtime import prepare_job

    try:
        data, limits, env, job_input = read_job(args)
        job = prepare_job(
            data,
            job_input,
            args=args.arg,
            env=env,
            entry=args.entry,
            limits=limits,
            deterministic=args.deterministic,
            program_name=Path(args.module).name,
            dirs=args.dirs,
            engine=args.engine,
        )
    except UsageError as exc:
        return fail(str(exc), exc.code)
    except (ValueError, EngineUnavailable) as exc:
        return fail(str(exc))
    signed = bool(args.receipt or args.json)
    if signed:  # the signing library, schemas and manifests load only for a receipt
        from pyphase.manifest import job_id, make_manifest
        from pyphase.receipt import make_receipt, timestamp

        started = timestamp()
    on_output = None if args.json else print_output
    if args.no_sandbox:
        try:
            result = _run_here(job, on_output, args.data_dir, args.module)
        except InvalidModule as exc:
            message = str(exc)
            if args.json:
                print(json.dumps({"status": "invalid_module", "message": message}))
            else:
                print(f"phase: invalid_module: {message}", file=sys.stderr)
            return STATUS_EXIT_CODES["invalid_module"]
    else:
        from pyphase import engines
        from pyphase.engines import AUTO_INLINE_COMPILE_BYTES, looks_long
        from pyphase.sandbox import Sandbox

        previous = engines.data_dir()
        if job.engine != "wasm3":
            _use_data_dir(args.data_dir)  # auto's history and compiled code, as a node keeps them
        try:
            # the compiling engine costs this process and its fork server 10-20 ms to load: only when this job may
            # use it, or may turn out long and get its big module compiled for the next run right after it
            big = len(data) > AUTO_INLINE_COMPILE_BYTES
            jit = job.engine == "wasmtime" or (job.engine == "auto" and (big or looks_long(job.digest, job.limits)))
            # one job: no spare worker (it would be forked, set up and killed unused), one fork server for either engine
            with Sandbox(
                workers=1,
                shm_bytes=Sandbox.shm_bytes_for(job),
                engines=None if jit else ["wasm3"],
                spares=0,
                one_server=True,
            ) as sandbox:
                result = sandbox.run_prepared(job, on_output)
                _await_compiles(sandbox.wait_for_compiles, args.module)
        except EngineUnavailable as exc:
            return fail(str(exc))
        finally:
            if job.engine != "wasm3":
                engines.use_data_dir(previous)  # nothing of this run outlives it (phase run called in process)
    module_hash = hash_text(job.digest)
    if not result.hashed:  # a job that never ran hashed nothing: name what was sent
        result = result.with_hashes(module_hash, sha256_text(job_input))
    receipt = None
    if signed:
        manifest = make_manifest(
            data,
            job_input,
            args=args.arg,
            env=env,
            entry=args.entry,
            limits=limits,
            deterministic=args.deterministic,
            module_hash=module_hash,
        )
        receipt = make_receipt(
            result,
            job_id=job_id(manifest),
            nonce=manifest["nonce"],
            limits=limits,
            identity=load_identity(args.identity),
            started_at=started,
        )
    code = emit_result(result, args, receipt, streamed=on_output is not None)
    if result.fs_unavailable and not args.dirs:
        print(NO_PREOPEN_NOTE, file=sys.stderr)
    return code


def _use_data_dir(data_dir: str | None) -> None:
    """Keep what ``auto`` learns and the compiled code in ``data_dir`` (default: plasmd's), as a node does."""
    import sqlite3

    from pyphase import engines
    from pyphase.identity import default_data_dir

    target = Path(data_dir) if data_dir else default_data_dir()
    try:
        engines.use_data_dir(target)
    except (OSError, sqlite3.Error) as exc:
        print(f"phase: note: compiled code is not kept across runs ({target}: {exc})", file=sys.stderr)


def _await_compiles(wait: Callable[[float], bool], name: str) -> None:
    """Let the compile a long job's module started finish before exiting, so that its next run starts compiled.

    Abandoned at exit, a compile that takes longer than the job would be started again by every run and never
    finish. Waiting costs a process the rest of the compile, once per module: at most
    COMPILE_WAIT_S, with a note on a terminal once it takes longer than COMPILE_NOTE_S; Ctrl-C skips it."""
    try:
        if wait(COMPILE_NOTE_S):
            return
        if sys.stderr.isatty():
            print(f"phase: compiling {name} for its next runs (Ctrl-C skips this)", file=sys.stderr, flush=True)
        done = wait(COMPILE_WAIT_S)
    except KeyboardInterrupt:
        print(f"phase: note: compile skipped: the next run of {name} starts on wasm3 again", file=sys.stderr)
        return
    if not done:
        print(f"phase: note: {name} did not compile within {COMPILE_WAIT_S:.0f} s; not waiting longer", file=sys.stderr)


def _run_here(job: PreparedJob, on_output: OutputCallback | None, data_dir: str | None, name: str) -> Result:
    """Run ``job`` in this process. Unless it is pinned to wasm3, the data dir keeps what ``auto`` learns and the
    compiled code across runs; a job still on wasm3 after AUTO_WALL_US has its module compiled meanwhile, kept for
    the next run, which then starts compiled (:func:`_await_compiles`)."""
    from pyphase import engines
    from pyphase.runtime import run_prepared

    if job.engine == "wasm3":
        return run_prepared(job, on_output)
    previous = engines.data_dir()
    _use_data_dir(data_dir)
    try:
        module = engines.module_for(job.data, job.digest)  # not validated again when the data dir says it was
        timer = None
        if job.engine == "auto" and engines.choose("auto", module, job.limits, job.deterministic) == "wasm3":
            timer = threading.Timer(
                engines.AUTO_WALL_US / 1e6, engines.compile_in_background, (module, job.limits, job.deterministic)
            )
            timer.daemon = True
            timer.start()
        try:
            result = run_prepared(job._replace(module=module), on_output)
        finally:
            if timer is not None:
                timer.cancel()
        if result.engine == "wasmtime":
            engines.record_validated(module)  # beside its compiled code: the next run skips the validator
        _await_compiles(engines.wait_for_compiles, name)
        return result
    finally:
        engines.use_data_dir(previous)  # nothing of this run outlives it (phase run called in process)


def cmd_verify(args: argparse.Namespace) -> int:
    from pyphase.receipt import verify_receipt

    try:
        receipt = json.loads(Path(args.receipt).read_text("utf-8"))
    except OSError as exc:
        return fail(f"cannot read {args.receipt}: {exc.strerror}")
    except (ValueError, UnicodeDecodeError) as exc:
        return fail(f"{args.receipt} is not JSON: {exc}", 1)
    given: dict[str, Any] = {}
    try:
        for name in ("module", "input", "stdout", "stderr"):
            path = getattr(args, name)
            if path is not None:
                given[name] = Path(path).read_bytes()
    except OSError as exc:
        return fail(f"cannot read {exc.filename}: {exc.strerror}")
    if args.input_text is not None:
        given["input"] = args.input_text.encode("utf-8")
    try:
        verify_receipt(receipt, nonce=args.nonce, signer=args.signer, **given)
        if args.outputs is not None:
            _verify_outputs(receipt, args.outputs)
    except VerificationError as exc:
        print(f"phase verify: FAILED {args.receipt}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    checked = ["signature", *sorted(given), *(["outputs"] if args.outputs is not None else [])]
    if args.nonce:
        checked.append("nonce")
    if args.signer:
        checked.append("signer")
    node = receipt["node"]["peer_id"]
    print(
        f"receipt OK: {receipt['status']} exit {receipt['exit_code']}, signed by {node} (checked: {', '.join(checked)})"
    )
    return 0


def _verify_outputs(receipt: dict[str, Any], directory: str) -> None:
    """Check that ``directory`` is exactly the output tree the (verified) receipt names."""
    from pyphase import trees
    from pyphase.errors import TreeError

    expected = receipt.get("outputs")
    if expected is None:
        raise VerificationError(["outputs: the receipt names no output tree (the job had no directories)"])
    try:
        listing = trees.listing_path(directory).read_bytes()
    except OSError:
        listing = None
    try:
        trees.verify_dir(directory, expected, listing)
    except TreeError as exc:
        raise VerificationError([f"outputs: {exc}"]) from None
    except OSError as exc:
        raise VerificationError([f"outputs: cannot read {directory}: {exc.strerror or exc}"]) from None


def cmd_keygen(args: argparse.Namespace) -> int:
    target = Path(args.out) if args.out else default_identity_path()
    if args.out and not target.parent.is_dir():  # a typo in --out must not become a tree of directories
        return fail(
            f"{target.parent} does not exist (or is not a directory): create it first, or give --out a "
            f"path in an existing directory"
        )
    if target.exists() and not args.force:
        return fail(
            f"{target} already exists: 'phase keygen --force' replaces it (the peer id "
            f"{_peer_id_or_unreadable(target)} is then lost for good)"
        )
    identity = Identity.generate()
    try:
        identity.save(target, overwrite=args.force)
    except IdentityError as exc:
        return fail(str(exc))
    print(identity.peer_id)
    print(f"phase: wrote {target} (mode 0600)", file=sys.stderr)
    return 0


def _peer_id_or_unreadable(path: Path) -> str:
    try:
        return Identity.load(path).peer_id
    except IdentityError:
        return "(unreadable)"


def cmd_id(args: argparse.Namespace) -> int:
    try:
        identity = Identity.load(args.identity or default_identity_path())
    except IdentityError as exc:
        return fail(str(exc))
    print(identity.peer_id)
    return 0


def register(sub: Any) -> None:
    """Add ``run``, ``verify``, ``keygen`` and ``id`` to the ``phase`` command's sub-parsers."""
    p = sub.add_parser(
        "run",
        help="run a module locally and print its output",
        description="Run MODULE.wasm on this machine in an isolated worker process, printing its output as it\n"
        "writes. Here, as with 'wasmtime run', a job has no wall-clock limit, memory up to wasm32's 4 GiB\n"
        "and no output cap unless you give one; 'phase submit' takes a node's stricter defaults.",
        epilog=EPILOG_RUN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("module", metavar="MODULE.wasm")
    add_job_options(p, LOCAL_LIMITS)
    add_dir_options(p, "let the module read and write directory HOST", "let the module read directory HOST")
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run in this process instead of an isolated worker (trusted modules only)",
    )
    p.add_argument(
        "--engine",
        choices=("wasm3", "wasmtime", "auto"),
        default="auto",
        help="wasm3 interprets (starts in µs), wasmtime compiles (needs pyphase[jit]; in the sandbox too); "
        "auto: long jobs compiled, short ones on wasm3 (default auto)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where runs keep compiled code and which modules ran long, as a node does "
        "(default: plasmd's default data directory)",
    )
    p.add_argument("--identity", metavar="FILE", help=f"key that signs the receipt (default {default_identity_path()})")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "verify",
        help="check a receipt's signature and hashes",
        description="Check RECEIPT.json: its signature, and the hash of every file given.",
    )
    p.add_argument("receipt", metavar="RECEIPT.json")
    p.add_argument("--module", metavar="F", help="the module file the job ran")
    p.add_argument("--input", metavar="F", help="the input file")
    p.add_argument("--input-text", metavar="TEXT", help="the input, as text")
    p.add_argument("--stdout", metavar="F", help="the stdout bytes received")
    p.add_argument("--stderr", metavar="F", help="the stderr bytes received")
    p.add_argument("--nonce", help="the nonce the client chose")
    p.add_argument("--signer", metavar="PEERID", help="the peer that must have signed it")
    p.add_argument(
        "--outputs", metavar="DIR", help="the directory phase submit --out wrote: must be the output tree it names"
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "keygen",
        help="create an Ed25519 identity",
        description="Create an identity key (mode 0600) and print its peer id.",
    )
    p.add_argument("--out", metavar="FILE", help=f"where to write it (default {default_identity_path()})")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("id", help="print this machine's peer id")
    p.add_argument("--identity", metavar="FILE")
    p.set_defaults(func=cmd_id)
