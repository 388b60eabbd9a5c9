"""JSON Schemas of Phase's documents, shipped in the package.

The schema files are the one source of truth; ``fastjsonschema`` compiles each into Python code
once, so checking a receipt on a client's hot path costs microseconds, not the hundreds that an
interpreting validator takes. fastjsonschema (with the decimal it brings) is imported on the first check, not by an
idle node; the files are read from beside this module (importlib.resources would bring zipfile and tempfile, about
2 MB and 7 ms of a ``phase verify``, for a package that is never zipped: it has C extensions).

Generating and compiling that code took 12-22 ms of every ``phase verify``, ``submit`` and ``run --receipt``: the
compiled code is kept in the user's cache (``$XDG_CACHE_HOME/phase/schemas``, else ``~/.cache/phase/schemas``), named
by the sha256 of what it is made from (the schema file, fastjsonschema's version, the interpreter's bytecode tag), so
a changed schema or library is generated again and the schema files stay the one source. Like Python's own
``__pycache__``, the cache is trusted as the user's own files: a file another user owns is never read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
import sys
from functools import lru_cache
from pathlib import Path
from types import CodeType
from typing import Any, Callable

SCHEMA_FILES = {"manifest": "manifest.schema.json", "receipt": "receipt.schema.json"}


def _text(name: str) -> str:
    return Path(__file__).with_name(SCHEMA_FILES[name]).read_text("utf-8")


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    """The parsed schema ``name`` (``manifest`` or ``receipt``)."""
    schema: dict[str, Any] = json.loads(_text(name))
    return schema


def cache_dir() -> Path:
    """Where the compiled validators are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phase" / "schemas"


def _cache_path(name: str) -> Path:
    """The cache file of schema ``name``'s validator, named by everything its code is made from."""
    key = hashlib.sha256(_text(name).encode())
    spec = importlib.util.find_spec("fastjsonschema")  # its version file, without importing the generator
    if spec is not None and spec.origin:
        key.update(Path(spec.origin).with_name("version.py").read_bytes())
    key.update(f"{sys.implementation.cache_tag}/{marshal.version}".encode())
    return cache_dir() / f"{name}-{key.hexdigest()[:32]}.bin"


Compiled = tuple[str, CodeType]  # the validating function's name, and the code that defines it


def _cached_code(path: Path) -> Compiled | None:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_uid != os.getuid():
                return None  # not the user's own file: generate instead
            kept = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if isinstance(kept, tuple) and len(kept) == 2 and isinstance(kept[0], str) and isinstance(kept[1], CodeType):
        return kept[0], kept[1]
    return None


def _generated_code(name: str, path: Path) -> Compiled:
    import fastjsonschema  # type: ignore[import-untyped]

    source = fastjsonschema.compile_to_code(load(name))
    function = source[source.index("\ndef ") + 5 :].split("(", 1)[0]  # the first function is the schema's root
    compiled = (function, compile(source, f"<{SCHEMA_FILES[name]} validator>", "exec"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps(compiled))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full home: generated again next time, nothing else
    return compiled


@lru_cache(maxsize=None)
def _validator(name: str) -> Callable[[Any], Any]:
    path = _cache_path(name)
    function, code = _cached_code(path) or _generated_code(name, path)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # fastjsonschema's code for our own schema file
    validate: Callable[[Any], Any] = namespace[function]
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
    where = _float_path(document) if _has_float(document) else None
    if where is not None:
        # JSON Schema calls 1234.0 an integer; no number in these documents is fractional, and a float size
        # or limit would pass here and break whoever computes with it later
        return [f"{name}{where}: must be an integer, not a float"]
    return []


def _has_float(document: Any) -> bool:
    """Whether ``document`` holds a float anywhere: the common answer, no, without building paths."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, float):
            return True
    return False


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
