"""An artifact store: a directory of files named by their SHA-256, plus the current boot manifest.

Layout (the same paths are served over HTTP by :mod:`pyphase.boot.server`)::

    STORE/sha256/<64 hex>        artifact bytes, named by their hash
    STORE/boot/manifest.json     the current signed boot manifest
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from pyphase.boot.errors import ArtifactError
from pyphase.boot.manifest import Artifact, encode_manifest, parse_manifest

HEX_RE = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_PATH = "boot/manifest.json"


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_PATH

    def path_for(self, hex_digest: str) -> Path:
        if not HEX_RE.match(hex_digest):
            raise ArtifactError(f"not a sha256 hex digest: {hex_digest!r}")
        return self.root / "sha256" / hex_digest

    def add_file(self, source: str | os.PathLike[str]) -> Artifact:
        """Copy ``source`` into the store under its hash (atomically); return its :class:`Artifact`."""
        artifact = Artifact.of_file(source)
        target = self.path_for(artifact.hex)
        if target.exists() and Artifact.of_file(target) == artifact:
            return artifact
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(tmp, 0o644)
            Artifact(artifact.hash, artifact.size).check_file(tmp)  # the copy, not the source, is what we serve
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return artifact

    def write_manifest(self, document: Mapping[str, Any]) -> Path:
        """Store ``document`` as the current manifest, after checking that every artifact it names is here."""
        manifest = parse_manifest(document)
        for role, artifact in manifest.artifacts().items():
            path = self.path_for(artifact.hex)
            if not path.exists():
                raise ArtifactError(f"{role} {artifact.hash} is not in the store {self.root}")
        target = self.manifest_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(".manifest.json.tmp")
        tmp.write_bytes(encode_manifest(document))
        os.replace(tmp, target)
        return target

    def scan(self) -> dict[str, int]:
        """Hash every artifact; return {hex: size} of those whose bytes match their name.

        Files whose content does not match their name are left out (and reported by the caller),
        so a corrupted store never serves bytes under a hash they do not have.
        """
        good: dict[str, int] = {}
        directory = self.root / "sha256"
        if not directory.is_dir():
            return good
        for entry in sorted(directory.iterdir()):
            if not HEX_RE.match(entry.name) or not entry.is_file():
                continue
            artifact = Artifact.of_file(entry)
            if artifact.hex == entry.name:
                good[entry.name] = artifact.size
        return good
