"""JSON Schemas of Phase's documents, shipped in the package.

The schema files are the one source of truth; ``fastjsonschema`` compiles each into Python code
once, so checking a receipt on a client's hot path costs microseconds, not the hundreds that an
interpreting validator takes. fastjsonschema (with the decimal it brings) is imported on the first check, not by an
idle node; the files are read from beside this module (importlib.resources would bring zipfile and tempfile, about
2 MB and 7 ms of a ``phase verify``, for a package that is never zipped: it has C extensions).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

SCHEMA_FILES = {"manifest": "manifest.schema.json", "receipt": "receipt.schema.json"}


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The parsed schema ``name`` (``manifest`` or ``receipt``)."""
    text = Path(__file__).with_name(SCHEMA_FILES[name]).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=None)
def _validator(name: str) -> Callable[[Any], Any]:
    import fastjsonschema  # type: ignore[import-untyped]

    validate: Callable[[Any], Any] = fastjsonschema.compile(load(name))
    return validate


def errors(name: str, document: Any) -> list[str]:
    """How ``document`` fails schema ``name`` (empty when it conforms); the first failure, with its path."""
    import fastjsonschema

    try:
        _validator(name)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (exc.path or [])[1:])
        message = exc.message.replace("data" + path, "").strip() if path else exc.message.replace("data ", "", 1)
        return [f"{name}{path}: {message}"]
    where = _float_path(document)
    if where is not None:
        # JSON Schema calls 1234.0 an integer; no number in these documents is fractional, and a float size
        # or limit would pass here and break whoever computes with it later
        return [f"{name}{where}: must be an integer, not a float"]
    return []


def _float_path(document: Any) -> str | None:
    """The path of the first float in ``document`` (None: there is none). Iterative: depth costs no stack."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float):
            return path
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}") for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
    return None
