"""Whether a sandbox worker runs demoted (pyphase.sandbox.demote), for the sandbox's and the node's tests."""

from __future__ import annotations

import os

from pyphase.sandbox.demote import NICE_STEP

BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)  # the tests' own nice value, which nodes and sandboxes inherit


def demoted(pid: int) -> bool:
    """``pid`` runs ``NICE_STEP`` above the tests' nice value (False once it is gone)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, pid) == min(19, BASE_NICE + NICE_STEP)
    except OSError:
        return False
