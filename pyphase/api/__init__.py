"""What ``plasmd`` serves over HTTP beside ``phase/1``: the JSON API (OpenAPI 3.1 in ``openapi.json``),
``/metrics`` and the dashboard (``static/``), plus the job history they read. See docs/API.md."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pyphase.schemas import load as load_schema


@lru_cache(maxsize=None)
def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document, as shipped in the package (the one source of its shapes), with its
    ``Receipt`` schema taken from the receipt's own JSON Schema, so the API documents every receipt field."""
    from importlib import resources  # here: it brings tempfile, shutil, bz2, lzma, which an idle node never needs

    doc: dict[str, Any] = json.loads(resources.files(__name__).joinpath("openapi.json").read_text("utf-8"))
    schemas = doc["components"]["schemas"]
    receipt = {k: v for k, v in load_schema("receipt").items() if k not in ("$schema", "$id", "$defs")}
    text = json.dumps(receipt).replace('"#/$defs/hash"', '"#/components/schemas/Hash"')
    schemas["Receipt"] = {**json.loads(text), "description": schemas["Receipt"]["description"]}
    schemas["Hash"] = load_schema("receipt")["$defs"]["hash"]
    return doc
