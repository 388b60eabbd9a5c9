"""Test only: ``plasmd`` whose node cheats in one way, so tests can show that clients catch it.

    python tests/net/misbehaving_plasmd.py MODE [plasmd arguments ...]

The shipped node has no such switch: the cheating lives here, in a :class:`~pyphase.net.node.Node` subclass
that overrides :meth:`~pyphase.net.node.Node.answer`, started through ``pyphase.daemon.main(node_class=...)``.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from pyphase import daemon
from pyphase.digests import sha256_text
from pyphase.identity import Identity
from pyphase.limits import Limits
from pyphase.manifest import job_id
from pyphase.net.node import Node
from pyphase.receipt import make_receipt
from pyphase.result import Result

MODES = ("forge-receipt", "lie-stdout", "mismatch-stdout", "wrong-signer", "hang", "tamper-outputs")


def misbehaving_node(mode: str) -> type[Node]:
    """A node class that answers every job dishonestly in the way ``mode`` names."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    class MisbehavingNode(Node):
        def answer(
            self,
            result: Result,
            manifest: dict[str, Any],
            limits: Limits,
            started: str,
            outputs: dict[str, Any] | None = None,
        ) -> tuple[bytes, dict[str, Any]] | None:
            if mode == "hang":
                return None
            if mode == "lie-stdout":
                stdout = b"forged by a lying node\n" + result.stdout
                result = dataclasses.replace(result, stdout=stdout, stdout_hash=sha256_text(stdout))
            signer = Identity.generate() if mode == "wrong-signer" else self.identity
            receipt = make_receipt(
                result,
                job_id=job_id(manifest),
                nonce=manifest["nonce"],
                limits=limits,
                identity=signer,
                started_at=started,
                outputs=outputs,
            )
            if mode == "forge-receipt":
                receipt["exit_code"] = result.exit_code + 1
            stdout = result.stdout + b"!" if mode == "mismatch-stdout" else result.stdout
            return stdout, receipt

        def _want(self, rid: bytes, msg: Any) -> None:
            held = self._outputs.get((rid, msg["job"]))
            if mode == "tamper-outputs" and held is not None:
                path = held[0].output_paths.get(msg["blob"])
                if path is not None:  # the receipt names the true file; the bytes sent are another's
                    with open(path, "r+b") as f:
                        first = f.read(1)
                        f.seek(0)
                        f.write(bytes([first[0] ^ 1]) if first else b"")
            super()._want(rid, msg)

    return MisbehavingNode


if __name__ == "__main__":
    sys.exit(daemon.main(sys.argv[2:], node_class=misbehaving_node(sys.argv[1])))
