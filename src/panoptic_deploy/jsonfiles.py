"""JSON artifacts with a schema: the package's schemas, one-line validation problems, checked writing and
reading (benchmark results, engine sidecars, trtexec checks), and one codec between frozen dataclasses and
their JSON form.

The codec (:func:`to_json`, :func:`from_json`) maps a dataclass to an object with one key per field, tuples
to lists, and back by the field types (nested dataclasses, ``tuple[...]``, ``dict[str, ...]``, ``X | None``).
A field whose JSON form is not its value says so in its metadata (:func:`json_meta`): another key path,
its own encode/decode pair, or left out when None. So a result class declares its layout once, beside its
fields, instead of a hand-written ``to_json``/``from_json`` pair that must be kept in step with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from panoptic_deploy.errors import PanopticDeployError
from panoptic_deploy.fileio import write_text_atomic


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON schema (draft 2020-12) shipped in ``panoptic_deploy/schemas/``, e.g. ``bench.schema.json``."""
    text = resources.files("panoptic_deploy").joinpath(f"schemas/{name}").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_problem(data: object, schema: dict[str, Any]) -> str | None:
    """One line naming the first schema violation (key path and message), or None if ``data`` is valid."""
    import jsonschema
    from jsonschema.exceptions import best_match

    error = best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) <= 200 else error.message[:200] + " ..."
    return f"key '{where}': {message}"


def read_json(path: str | os.PathLike[str], what: str, error: type[PanopticDeployError]) -> Any:
    """Parse a JSON file; ``error`` (one line naming the file and ``what`` it should hold) if it cannot."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid JSON (not UTF-8 text: {exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def write_checked_json(
    data: object,
    path: str | os.PathLike[str],
    schema: str,
    what: str,
    error: type[PanopticDeployError],
    indent: int = 2,
) -> None:
    """Validate ``data`` against the package schema ``schema`` and write it to ``path`` atomically;
    ``error`` ("<path>: refusing to write an invalid <what>: <problem>") and no file if it is invalid."""
    problem = schema_problem(data, load_schema(schema))
    if problem is not None:
        raise error(f"{path}: refusing to write an invalid {what}: {problem}")
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def read_checked_json(
    path: str | os.PathLike[str], schema: str, what: str, error: type[PanopticDeployError]
) -> Any:
    """Parse ``path`` and validate it against the package schema ``schema``; ``error`` naming the file and
    the offending key ("<path>: invalid <what>: key '...': ...") if it cannot be read or is invalid."""
    data = read_json(path, what, error)
    problem = schema_problem(data, load_schema(schema))
    if problem is not None:
        raise error(f"{path}: invalid {what}: {problem}")
    return data


# ---------------------------------------------------------------------------------------------------------
# Dataclasses <-> JSON

T = TypeVar("T")
_CODEC = "panoptic_deploy.json"  # the metadata key of json_meta()


@dataclasses.dataclass(frozen=True)
class _FieldCodec:
    path: tuple[str, ...] | None
    encode: Callable[[Any], Any] | None
    decode: Callable[[Any], Any] | None
    omit_none: bool


def json_meta(
    *,
    key: str | tuple[str, ...] | None = None,
    encode: Callable[[Any], Any] | None = None,
    decode: Callable[[Any], Any] | None = None,
    omit_none: bool = False,
) -> dict[str, Any]:
    """The ``metadata`` of a dataclass ``field`` whose JSON form is not plain: ``key`` (a name, or a path of
    names into nested objects; default the field name), ``encode``/``decode`` for a value whose JSON is not
    its fields, ``omit_none`` to leave the key out when the value is None (and read None when it is absent).
    Use: ``x: int = field(metadata=json_meta(key=("outer", "x")))``."""
    path = (key,) if isinstance(key, str) else key
    return {_CODEC: _FieldCodec(path, encode, decode, omit_none)}


def _codec(f: dataclasses.Field[Any]) -> _FieldCodec:
    codec = f.metadata.get(_CODEC)
    return codec if isinstance(codec, _FieldCodec) else _FieldCodec(None, None, None, False)


def to_json(value: Any) -> Any:
    """Plain JSON types for ``value``: dataclasses become objects (see :func:`json_meta`), tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            codec = _codec(f)
            item = getattr(value, f.name)
            if item is None and codec.omit_none:
                continue
            node = out
            *parents, last = codec.path or (f.name,)
            for name in parents:
                node = node.setdefault(name, {})
            node[last] = codec.encode(item) if codec.encode else to_json(item)
        return out
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """The ``cls`` instance whose :func:`to_json` is ``data`` (which must already be schema-valid); fields
    missing from ``data`` keep their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        codec = _codec(f)
        node: Any = data
        for name in codec.path or (f.name,):
            node = node.get(name, _MISSING) if isinstance(node, Mapping) else _MISSING
        if node is _MISSING:
            if codec.omit_none:
                kwargs[f.name] = None
            continue
        kwargs[f.name] = codec.decode(node) if codec.decode else _decode(hints[f.name], node)
    return cls(**kwargs)


_MISSING = object()


def _decode(hint: Any, value: Any) -> Any:
    """``value`` (decoded JSON) as the type ``hint`` says: dataclasses, tuples, dicts, lists, optionals."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        # X | None decodes as X; a union of plain types (int | str) is taken as it is.
        return _decode(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_json(hint, value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True)) if args else tuple(value)
    if origin is list:
        return [_decode(args[0], v) for v in value] if args else list(value)
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()} if args else dict(value)
    return value
