"""Node and client identities: one Ed25519 key pair, its peer id and derived CURVE keys.

A peer id is the lower-case base32 (no padding) of the whole Ed25519 public key,
so a peer id alone authenticates a peer. The ZeroMQ CURVE key pair is derived from
the same key with libsodium's ed25519 -> curve25519 conversion.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyphase.errors import IdentityError

if TYPE_CHECKING:
    import nacl.signing

# Ed25519's sizes (RFC 8032), libsodium's crypto_sign_PUBLICKEYBYTES and crypto_sign_SEEDBYTES (a test checks that
# they agree): written here so that the paths and peer ids a command needs cost no import of libsodium.
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
_KEY_FILE_HEADER = "phase-ed25519-seed-v1:"


def default_home() -> Path:
    """Directory of the user's Phase state: ``$PHASE_HOME``, else ``$XDG_CONFIG_HOME/phase``, else ``~/.config/phase``."""
    if os.environ.get("PHASE_HOME"):
        return Path(os.environ["PHASE_HOME"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "phase"


def default_data_dir() -> Path:
    """A node's default data directory (``plasmd --data-dir``; ``phase run`` keeps its compiled code and module
    history there too): ``$XDG_DATA_HOME/phase/node``, else ``~/.local/share/phase/node``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "phase" / "node"


def default_identity_path() -> Path:
    """Where ``phase keygen`` writes and ``phase`` reads the user's identity by default."""
    return default_home() / "identity.key"


def peer_id_from_public_key(public_key: bytes) -> str:
    """Text form of a public key: lower-case base32 without padding."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}")
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of :func:`peer_id_from_public_key`; raises ``ValueError`` on malformed ids."""
    text = peer_id.strip().upper()
    padded = text + "=" * (-len(text) % 8)
    why = (
        f"not a peer id: {peer_id!r} (a peer id is 52 base32 characters, the part before '@' of the "
        f"PEERID@HOST:PORT a node prints when it starts and writes to DATA_DIR/address)"
    )
    try:
        key = base64.b32decode(padded)
    except (binascii.Error, ValueError):
        raise ValueError(why) from None
    if len(key) != PUBLIC_KEY_BYTES or peer_id_from_public_key(key) != peer_id.strip().lower():
        raise ValueError(why)
    return key


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair with the names the network knows it by."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> Identity:
        import nacl.signing

        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != SEED_BYTES:
            raise IdentityError(f"identity seed must be {SEED_BYTES} bytes, got {len(seed)}")
        import nacl.signing

        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    def curve_keypair(self) -> tuple[bytes, bytes]:
        """(public, secret) X25519 keys for ZeroMQ CURVE, derived from this identity (raw 32 bytes each)."""
        import nacl.bindings

        seed_and_pk = bytes(self.signing_key) + self.public_key
        secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed_and_pk)
        public = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key)
        return public, secret

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the secret seed to ``path`` with mode 0600 (created atomically, never world-readable)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError:
            raise IdentityError(
                f"{target} already exists (save(..., overwrite=True) replaces it; the CLI: phase keygen --force)"
            ) from None
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(_KEY_FILE_HEADER + base64.b64encode(bytes(self.signing_key)).decode("ascii") + "\n")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read an identity written by :meth:`save`; refuses files readable by others."""
        source = Path(path)
        try:
            mode = source.stat().st_mode
            text = source.read_text().strip()
        except FileNotFoundError:
            raise IdentityError(f"no identity at {source} (create one with 'phase keygen')") from None
        except OSError as exc:
            raise IdentityError(f"cannot read identity {source}: {exc.strerror}") from None
        if mode & 0o077:
            raise IdentityError(f"{source} is readable by others (mode {mode & 0o777:o}); run chmod 600 on it")
        if not text.startswith(_KEY_FILE_HEADER):
            raise IdentityError(f"{source} is not a Phase identity file")
        try:
            seed = base64.b64decode(text[len(_KEY_FILE_HEADER) :], validate=True)
        except (binascii.Error, ValueError):
            raise IdentityError(f"{source} holds a malformed key") from None
        return cls.from_seed(seed)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the identity at ``path``, creating it first if the file does not exist."""
        if not Path(path).exists():
            identity = cls.generate()
            identity.save(path)
            return identity
        return cls.load(path)
