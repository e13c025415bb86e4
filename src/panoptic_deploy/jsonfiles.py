"""JSON artifacts with a schema: the package's schemas, one-line validation problems, checked writing and
reading (benchmark results, engine sidecars, trtexec checks)."""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

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
