"""Release keys: the Ed25519 key pair that signs boot manifests.

The secret half is stored exactly like a node identity (:class:`pyphase.identity.Identity`,
mode 0600). The public half is a one-line text file that the stage-1 builder bakes into
the image and that ``phase-verify`` reads::

    phase-ed25519-public-v1:<base64 of the 32-byte public key>
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import nacl.bindings

from pyphase.boot.errors import ReleaseKeyError
from pyphase.errors import IdentityError
from pyphase.identity import Identity

PUBLIC_KEY_HEADER = "phase-ed25519-public-v1:"
PUBLIC_KEY_BYTES = nacl.bindings.crypto_sign_PUBLICKEYBYTES


def public_key_text(public_key: bytes) -> str:
    """The one-line text form of a release public key (with trailing newline)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ReleaseKeyError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return PUBLIC_KEY_HEADER + base64.b64encode(public_key).decode("ascii") + "\n"


def parse_public_key(text: str) -> bytes:
    """Inverse of :func:`public_key_text`; raises :class:`ReleaseKeyError` if malformed."""
    line = text.strip()
    if not line.startswith(PUBLIC_KEY_HEADER):
        raise ReleaseKeyError("not a Phase release public key (expected 'phase-ed25519-public-v1:...')")
    try:
        key = base64.b64decode(line[len(PUBLIC_KEY_HEADER) :], validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseKeyError("release public key is not valid base64") from None
    if len(key) != PUBLIC_KEY_BYTES:
        raise ReleaseKeyError(f"release public key has {len(key)} bytes, expected {PUBLIC_KEY_BYTES}")
    return key


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    try:
        return parse_public_key(Path(path).read_text())
    except FileNotFoundError:
        raise ReleaseKeyError(f"no release public key at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseKeyError(f"cannot read release public key {path}: {exc}") from None


def load_secret_key(path: str | os.PathLike[str]) -> Identity:
    try:
        return Identity.load(path)
    except IdentityError as exc:
        raise ReleaseKeyError(f"release key: {exc}") from None


def public_key_path_for(secret_path: str | os.PathLike[str]) -> Path:
    """Where :func:`generate` writes the public half: ``<secret path>.pub``."""
    p = Path(secret_path)
    return p.with_name(p.name + ".pub")


def generate(secret_path: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[Identity, Path]:
    """Create a release key at ``secret_path`` (0600) and its public half beside it; return both."""
    identity = Identity.generate()
    try:
        identity.save(secret_path, overwrite=overwrite)
    except IdentityError as exc:
        raise ReleaseKeyError(str(exc)) from None
    pub = public_key_path_for(secret_path)
    pub.write_text(public_key_text(identity.public_key))
    return identity, pub
