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
from pyphase.net import wire
from pyphase.net.node import Node
from pyphase.receipt import make_receipt
from pyphase.result import Result

CHUNK_MODES = ("tamper-chunk", "overlong-chunk", "flood-chunks")
MODES = ("forge-receipt", "lie-stdout", "mismatch-stdout", "wrong-signer", "hang", "tamper-outputs", *CHUNK_MODES)


def misbehaving_node(mode: str) -> type[Node]:
    """A node class that answers every job dishonestly in the way ``mode`` names."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    class MisbehavingNode(Node):
        def _send(self, rid: bytes, frames: list[Any], size: int = 0) -> bool:
            if mode in CHUNK_MODES and len(frames) == 2 and wire.decode(frames).type == "chunk":
                data = bytes(frames[1])
                if mode == "tamper-chunk":  # the receipt then covers other bytes than those streamed
                    data = bytes([data[0] ^ 0x20]) + data[1:]
                elif mode == "overlong-chunk":  # more than a chunk may carry
                    data = data + b"x" * wire.MAX_CHUNK_BYTES
                else:  # chunks of a legal size, adding up to more than the job's output limit
                    data = data + b"x" * (wire.MAX_CHUNK_BYTES - len(data))
                frames = [frames[0], data]
            return super()._send(rid, frames, size)

        def answer(
            self,
            result: Result,
            manifest: dict[str, Any],
            limits: Limits,
            started: str,
            outputs: dict[str, Any] | None = None,
        ) -> tuple[bytes, dict[str, Any]] | None:
            if mode in CHUNK_MODES:
                return super().answer(result, manifest, limits, started, outputs)
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
