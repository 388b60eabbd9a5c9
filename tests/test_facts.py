"""One source per fact: the job status names and default limits come from the C core, and everything that
lists them again (the receipt schema, the exception classes, the CLI's exit codes and help) agrees with it."""

from __future__ import annotations

import json
from pathlib import Path

from pyphase import _core
from pyphase.cli.jobs import EPILOG_RUN, STATUS_EXIT_CODES
from pyphase.errors import JOB_ERRORS
from pyphase.limits import Limits

SCHEMAS = Path(__file__).resolve().parent.parent / "pyphase" / "schemas"


def test_receipt_schema_lists_the_core_status_names():
    schema = json.loads((SCHEMAS / "receipt.schema.json").read_text())
    assert schema["properties"]["status"]["enum"] == list(_core.STATUS_NAMES)


def test_every_failing_status_has_an_exception_and_an_exit_code():
    failing = set(_core.STATUS_NAMES) - {"ok"}
    assert set(JOB_ERRORS) == failing
    assert set(STATUS_EXIT_CODES) == failing
    assert len(set(STATUS_EXIT_CODES.values())) == len(STATUS_EXIT_CODES)  # each status its own code
    for status, code in STATUS_EXIT_CODES.items():
        assert f"{status} {code}" in " ".join(EPILOG_RUN.split())


def test_default_limits_are_the_cores():
    assert {name: getattr(Limits(), name) for name in _core.DEFAULT_LIMITS} == _core.DEFAULT_LIMITS
    assert Limits().timeout_ms == 10_000 and Limits().memory_bytes == 64 << 20
