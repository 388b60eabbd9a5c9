"""``phase jobs`` and ``phase receipts``: what a node ran and signed, from its history (``pyphase.history``).

Read from the node's ``DATA_DIR/history.sqlite`` (``--data-dir``, default plasmd's), also while the node
runs and after it stopped. A Private-mode node keeps its history in memory: ask its API (``/v1/history``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pyphase.cli.jobs import EXIT_FAILED, EXIT_USAGE, fail

EPILOG = """\
examples:
  phase jobs                              the node's last 20 jobs (default data dir)
  phase jobs --data-dir /tmp/n1 --limit 100 --json
  phase jobs show 6545c123                one job by (a prefix of) its job id, with its receipt
  phase receipts show 6545c123 > r.json   the signed receipt, for 'phase verify r.json'
"""


def _open(args: argparse.Namespace) -> Any:
    from pyphase.history import History
    from pyphase.identity import default_data_dir

    return History.open_readonly(args.data_dir or default_data_dir())


def _show(args: argparse.Namespace, receipt_only: bool) -> int:
    history = _open(args)
    try:
        entry = history.get(args.job_id)
    finally:
        history.close()
    if entry is None:
        return fail(f"no job {args.job_id} in the history (give at least 8 characters of its job id)", EXIT_FAILED)
    print(json.dumps(entry["receipt"] if receipt_only else entry, indent=2, sort_keys=True))
    return 0


def _command(args: argparse.Namespace, receipts: bool) -> int:
    problem = _check(args)
    if problem:
        return fail(problem, EXIT_USAGE)
    try:
        if args.action == "show":
            return _show(args, receipt_only=receipts)
        history = _open(args)
        try:
            items = history.receipts(args.limit) if receipts else history.jobs(args.limit, with_receipts=args.json)
        finally:
            history.close()
    except FileNotFoundError as exc:
        return fail(str(exc), EXIT_FAILED)
    if args.json:
        print(json.dumps(items, indent=2, sort_keys=True))
    elif receipts:
        print(f"{'STARTED':24} {'JOB':16} {'STATUS':14} {'SIGNED BY':20} SIGNATURE")
        for r in items:
            print(
                f"{r['started_at']:24} {r['job_id'][7:23]:16} {r['status']:14} {r['node']['peer_id'][:20]} "
                f"{r['signature'][:16]}…"
            )
    else:
        print(f"{'FINISHED':24} {'JOB':16} {'STATUS':14} {'EXIT':>5} {'WALL':>10}  MODULE")
        for j in items:
            print(
                f"{j['finished_at']:24} {j['job_id'][7:23]:16} {j['status']:14} {j['exit_code']:>5} "
                f"{j['wall_us'] / 1000:>8.1f}ms  {j['module'][7:23]}"
            )
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """``phase jobs [list|show JOB_ID]``."""
    return _command(args, receipts=False)


def cmd_receipts(args: argparse.Namespace) -> int:
    """``phase receipts [list|show JOB_ID]``."""
    return _command(args, receipts=True)


def register(sub: Any) -> None:
    """Add ``jobs`` and ``receipts`` to the ``phase`` command's sub-parsers."""
    for name, func, what in (
        ("jobs", cmd_jobs, "jobs a node ran"),
        ("receipts", cmd_receipts, "receipts a node signed"),
    ):
        p = sub.add_parser(
            name,
            help=f"list or show the {what} (its history)",
            description=f"List the {what}, newest first, or show one by (a prefix of) its job id. "
            "Reads the node's DATA_DIR/history.sqlite.",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("action", nargs="?", choices=("list", "show"), default="list")
        p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="for show: the job id, or its first 8+ characters")
        p.add_argument("--data-dir", metavar="DIR", help="the node's data directory (default: plasmd's default)")
        p.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)


def _check(args: argparse.Namespace) -> str | None:
    if args.action == "show" and not args.job_id:
        return "show needs a JOB_ID"
    if args.action == "list" and args.job_id:
        return "a JOB_ID goes with show"
    if not 1 <= args.limit <= 100_000:
        return "--limit must be between 1 and 100000"
    return None
