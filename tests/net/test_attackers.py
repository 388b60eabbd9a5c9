"""The abuse soak's own hygiene: attacker processes never outlive the test run that started them."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_attacker_processes_die_with_their_parent(tmp_path, how):
    """A parent (as pytest would) starts an attacker process, then is stopped by ``how``: the attacker goes too.
    Before, attackers were daemon children that only a clean exit of the parent stopped."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(HERE)!r})
            from attackers import Attack, AttackProcess
            from pyphase import Identity

            if __name__ == "__main__":
                attack = AttackProcess(Attack, Identity.generate().peer_id + "@127.0.0.1:9", "127.0.0.1", {{}})
                attack.start()
                print(attack.pid, flush=True)
                time.sleep(120)
        """)
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.5)
        assert not _gone(child)
        parent.send_signal(how)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), f"attacker {child} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
