"""Errors of Phase Boot, under :class:`pyphase.errors.PhaseError`."""

from __future__ import annotations

from pyphase.errors import PhaseError


class BootError(PhaseError):
    """Base class of every Phase Boot error."""


class BootManifestError(BootError, ValueError):
    """A boot manifest is malformed, badly signed, expired or too old."""


class ManifestExpired(BootManifestError):
    """A boot manifest's ``expires_at`` has passed."""


class ArtifactError(BootError, ValueError):
    """An artifact file is missing, or its bytes do not match the hash or size that names it."""


class ReleaseKeyError(BootError):
    """A release key file is missing, unreadable or malformed."""
