"""Phase Boot: signed boot manifests, release keys and the artifact server (host side).

Stage 1 itself (``initramfs/``) checks the same manifests with the static C tools in ``csrc/boot/``.
"""

from pyphase.boot.errors import ArtifactError, BootError, BootManifestError, ManifestExpired, ReleaseKeyError
from pyphase.boot.manifest import (
    Artifact,
    BootManifest,
    decode_manifest,
    encode_manifest,
    make_boot_manifest,
    parse_manifest,
    sign_manifest,
    verify_manifest,
)

__all__ = [
    "Artifact",
    "ArtifactError",
    "BootError",
    "BootManifest",
    "BootManifestError",
    "ManifestExpired",
    "ReleaseKeyError",
    "decode_manifest",
    "encode_manifest",
    "make_boot_manifest",
    "parse_manifest",
    "sign_manifest",
    "verify_manifest",
]
