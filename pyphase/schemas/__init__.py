"""JSON Schemas of Phase's documents, shipped in the package and checked with ``jsonschema``."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMA_FILES = {"manifest": "manifest.schema.json", "receipt": "receipt.schema.json"}


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The parsed schema ``name`` (``manifest`` or ``receipt``)."""
    text = resources.files(__name__).joinpath(SCHEMA_FILES[name]).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=None)
def _validator(name: str) -> Any:
    import jsonschema  # type: ignore[import-untyped]  # imported on first use: it costs tens of ms and most commands never need it

    schema = load(name)
    return jsonschema.Draft202012Validator(schema, format_checker=None)


def errors(name: str, document: Any) -> list[str]:
    """Every way ``document`` fails schema ``name``, as ``path: message`` lines (empty when it conforms)."""
    found = []
    for error in sorted(_validator(name).iter_errors(document), key=lambda e: list(e.absolute_path)):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "(document)"
        found.append(f"{name}{path}: {error.message}" if path != "(document)" else f"{name}: {error.message}")
    return found
