"""detectron2/PanopticFCN configs without detectron2: defaults, YAML ``_BASE_`` chains, overrides.

Reproduces the merge semantics of detectron2's ``get_cfg()`` + ``add_panopticfcn_config`` +
``merge_from_file`` + ``merge_from_list`` (fvcore/yacs underneath), as spec §1.1 describes:

* YAML is read with ``yaml.safe_load``; ``_BASE_`` (a path or a list of paths) is resolved
  relative to the folder of the file that names it, recursively, later wins; mappings merge key
  by key, any other value replaces the base value wholesale (lists are never concatenated).
* Each string value goes through ``ast.literal_eval`` (``"(1, 2)"`` -> tuple, ``"1e-4"`` ->
  float, ``"False"`` -> bool); if that fails it stays a string.
* Each value must have the default's type: list<->tuple are converted to the default's type,
  ``None`` may replace or be replaced by a basic value, nothing else (no int->float).
* Unknown keys are errors.
* Beyond yacs: the values this package uses are range-checked after merging (sizes, thresholds,
  counts; :data:`panoptic_deploy.config_ranges.VALUE_RANGES`), naming the file or override that set the
  bad value.

Every problem is a :class:`~panoptic_deploy.errors.ConfigError` with one line naming the file
(or ``command-line override``) and the key.
"""

from __future__ import annotations

import ast
import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from panoptic_deploy.config_defaults import add_panopticfcn_defaults, detectron2_defaults
from panoptic_deploy.config_ranges import check_value_ranges
from panoptic_deploy.errors import ConfigError

__all__ = ["OPTS_SOURCE", "CfgNode", "check_yaml_file", "get_default_config", "load_config"]

BASE_KEY = "_BASE_"
# The only detectron2 config version these configs use; detectron2's upgrade path is not ported.
CONFIG_VERSION = 2
# What errors from KEY VALUE overrides name instead of a file.
OPTS_SOURCE = "command-line override"

# yacs' _VALID_TYPES: the types None may replace or be replaced by.
_BASIC_TYPES = (tuple, list, str, int, float, bool, type(None))

# Key path inside a YAML tree -> the file that set it (for error messages after merging bases).
_Origins = dict[tuple[str, ...], str]


class CfgNode(dict[str, Any]):
    """A config node: a ``dict`` of key -> value or sub-node, with attribute access.

    ``cfg.MODEL.POSITION_HEAD.DEFORM`` and ``cfg["MODEL"]["POSITION_HEAD"]["DEFORM"]`` are the
    same value. Plain mappings assigned into a node become nodes. A frozen node (what
    :func:`load_config` returns) rejects changes; :meth:`clone` gives a mutable deep copy.
    """

    def __init__(self, init: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_frozen", False)
        if init is not None:
            for key, value in init.items():
                self[key] = value

    # --- access -------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_mutable(key)
        if not isinstance(key, str):
            raise TypeError(f"config keys must be strings, got {key!r}")
        if isinstance(value, Mapping) and not isinstance(value, CfgNode):
            value = CfgNode(value)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._check_mutable(key)
        super().__delitem__(key)

    # dict's own mutators bypass __setitem__; route them through it (and the frozen check).
    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        self._check_mutable(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._check_mutable("")
        return super().popitem()

    def clear(self) -> None:
        self._check_mutable("")
        super().clear()

    def __ior__(self, other: Any) -> CfgNode:  # type: ignore[override,misc]
        self.update(other)
        return self

    # --- freezing -----------------------------------------------------------------------------
    def freeze(self) -> None:
        """Make this node and all sub-nodes immutable."""
        self._set_frozen(True)

    def defrost(self) -> None:
        """Make this node and all sub-nodes mutable again."""
        self._set_frozen(False)

    def is_frozen(self) -> bool:
        return bool(self.__dict__["_frozen"])

    def _set_frozen(self, frozen: bool) -> None:
        object.__setattr__(self, "_frozen", frozen)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(frozen)

    def _check_mutable(self, key: object) -> None:
        if self.__dict__["_frozen"]:
            raise AttributeError(f"cannot change config key {key!r}: the config is frozen (use clone())")

    # --- copies and serialisation -------------------------------------------------------------
    def clone(self) -> CfgNode:
        """A mutable deep copy."""
        return CfgNode(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts; leaf values deep-copied, tuples stay tuples."""
        return {
            key: value.to_dict() if isinstance(value, CfgNode) else copy.deepcopy(value)
            for key, value in self.items()
        }

    def dump(self) -> str:
        """YAML text (keys sorted) that :func:`load_config` reads back to exactly this config.

        Values holding a tuple are written as their Python literal (``(640, 672)``, the way the
        official YAMLs write them), and strings that ``literal_eval`` would change are written
        quoted, so the round trip keeps every type.
        """
        return yaml.dump(
            _yaml_data(self), Dumper=_Dumper, default_flow_style=False, sort_keys=True, width=1000
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> CfgNode:
        node = self.clone()
        node._set_frozen(self.is_frozen())
        return node

    def __reduce__(self) -> tuple[Any, ...]:
        # The default dict pickling sets items after the frozen flag; rebuild explicitly instead.
        return (_rebuild_cfgnode, (self.to_dict(), self.is_frozen()))

    def __repr__(self) -> str:
        return f"CfgNode({dict.__repr__(self)})"

    # --- merging ------------------------------------------------------------------------------
    def merge_from_file(self, path: str | Path) -> None:
        """Merge a YAML file (with its ``_BASE_`` chain) into this config, in place."""
        self._merge_file(path)

    def _merge_file(self, path: str | Path) -> _Origins:
        """:meth:`merge_from_file`, returning which file set each key."""
        source = str(path)
        data, origins = _load_yaml_with_base(Path(path), source, ())
        _merge_tree(self, data, (), origins)
        version = self["VERSION"]
        if "VERSION" in data and version != CONFIG_VERSION:
            raise ConfigError(
                f"{origins[('VERSION',)]}: VERSION {version!r} is not supported "
                f"(only detectron2 config version {CONFIG_VERSION})"
            )
        return origins

    def merge_from_list(self, opts: Sequence[Any], source: str = OPTS_SOURCE) -> None:
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` overrides (dotted keys), in place."""
        if len(opts) % 2 != 0:
            raise ConfigError(
                f"{source}: expected KEY VALUE pairs, got {len(opts)} items (key {opts[-1]!r} has no value)"
            )
        for full_key, raw in zip(opts[0::2], opts[1::2], strict=True):
            if not isinstance(full_key, str) or not full_key:
                raise ConfigError(f"{source}: config key must be a non-empty string, got {full_key!r}")
            parts = full_key.split(".")
            node: CfgNode = self
            for depth, part in enumerate(parts[:-1]):
                if part not in node:
                    raise ConfigError(f"{source}: unknown config key {full_key}")
                child = node[part]
                if not isinstance(child, CfgNode):
                    prefix = ".".join(parts[: depth + 1])
                    raise ConfigError(f"{source}: unknown config key {full_key} ({prefix} is not a mapping)")
                node = child
            leaf = parts[-1]
            if leaf not in node:
                raise ConfigError(f"{source}: unknown config key {full_key}")
            default = node[leaf]
            value = _decode_value(raw)
            if isinstance(default, CfgNode):
                raise ConfigError(
                    f"{source}: {full_key} is a mapping; override its keys one by one, "
                    f"got {_type_name(value)} ({value!r})"
                )
            node[leaf] = _coerce(value, default, full_key, source)


def _rebuild_cfgnode(data: dict[str, Any], frozen: bool) -> CfgNode:
    node = CfgNode(data)
    node._set_frozen(frozen)
    return node


def get_default_config() -> CfgNode:
    """detectron2 defaults + PanopticFCN additions (SEM_SEG_HEAD replaced); mutable, fresh each call."""
    tree = detectron2_defaults()
    add_panopticfcn_defaults(tree)
    return CfgNode(tree)


def load_config(path: str | Path, opts: Sequence[str] = ()) -> CfgNode:
    """Defaults <- YAML file (with ``_BASE_`` chain) <- ``KEY VALUE`` overrides; returns a frozen node.

    Raises ConfigError (one line, naming the file or ``command-line override`` and the key) for a
    missing/unreadable file, bad YAML, a ``_BASE_`` cycle, an unknown key, a wrongly typed value or a value
    out of its range (:data:`panoptic_deploy.config_ranges.VALUE_RANGES`).
    """
    cfg = get_default_config()
    origins = cfg._merge_file(path)
    cfg.merge_from_list(list(opts))
    for key in list(opts)[0::2]:
        origins[tuple(str(key).split("."))] = OPTS_SOURCE
    check_value_ranges(cfg, origins)
    cfg.freeze()
    return cfg


# --- YAML loading with _BASE_ (fvcore's load_yaml_with_base) ----------------------------------


def _load_yaml_with_base(path: Path, shown: str, chain: tuple[Path, ...]) -> tuple[dict[str, Any], _Origins]:
    """Read ``path`` and its bases; return the merged plain tree and who set each key.

    ``shown`` is how errors name this file; ``chain`` holds the resolved files above it (cycles).
    """
    resolved = path.resolve()
    if resolved in chain:
        names = " -> ".join(p.name for p in (*chain, resolved))
        raise ConfigError(f"{shown}: _BASE_ cycle: {names}")
    data = _read_yaml(path, shown)
    origins: _Origins = {}
    _record_origins(data, (), shown, origins)
    if BASE_KEY not in data:
        return data, origins

    bases = data.pop(BASE_KEY)
    del origins[(BASE_KEY,)]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{shown}: _BASE_ must be a path or a list of paths, got {bases!r}")

    merged: dict[str, Any] = {}
    merged_origins: _Origins = {}
    for base in bases:
        if base.startswith(("http://", "https://")):
            raise ConfigError(f"{shown}: _BASE_ {base!r}: remote base configs are not supported")
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            # Relative to the folder of the file that names it, not the working directory.
            base_path = path.parent / base_path
        base_data, base_origins = _load_yaml_with_base(base_path, str(base_path), (*chain, resolved))
        _merge_plain(merged, base_data, (), base_origins, merged_origins)
    _merge_plain(merged, data, (), origins, merged_origins)
    return merged, merged_origins


def _read_yaml(path: Path, shown: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: cannot read config file: not UTF-8 ({exc.reason})") from None
    data = _parse_yaml(text, shown)
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: a config file must be a mapping of keys, got {_type_name(data)}")
    return data


def _parse_yaml(text: str, shown: str) -> Any:
    """``yaml.safe_load``; a syntax error is one ConfigError line with the file, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        where = (
            f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
            if exc.problem_mark
            else ""
        )
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{shown}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: invalid YAML: {' '.join(str(exc).split())}") from None


def check_yaml_file(path: str | Path) -> None:
    """ConfigError naming the file, line and column if ``path`` (if it exists) is neither JSON nor YAML.

    For the workflow's ``config/config.yaml``: the Snakefile calls this before its ``configfile:``
    directive, whose own error ("Config file is not valid JSON or YAML") names neither file nor line.
    """
    p = Path(path)
    if not p.is_file():
        return  # Snakemake says that itself, naming the file
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        json.loads(text)  # Snakemake tries JSON first
        return
    except ValueError:
        pass
    _parse_yaml(text, str(p))


def _record_origins(data: Mapping[Any, Any], prefix: tuple[str, ...], shown: str, origins: _Origins) -> None:
    for key, value in data.items():
        if not isinstance(key, str):
            where = f" under {'.'.join(prefix)}" if prefix else ""
            raise ConfigError(f"{shown}: config keys must be strings, got {key!r}{where}")
        origins[(*prefix, key)] = shown
        if isinstance(value, dict):
            _record_origins(value, (*prefix, key), shown, origins)


def _merge_plain(
    dst: dict[str, Any],
    src: Mapping[str, Any],
    prefix: tuple[str, ...],
    src_origins: _Origins,
    dst_origins: _Origins,
) -> None:
    """fvcore's merge of raw YAML trees: mappings recurse, everything else replaces wholesale."""
    for key, value in src.items():
        path = (*prefix, key)
        if isinstance(value, dict) and key in dst:
            if not isinstance(dst[key], dict):
                raise ConfigError(
                    f"{src_origins[path]}: cannot merge mapping {'.'.join(path)} into the "
                    f"{_type_name(dst[key])} value set by {dst_origins[path]}"
                )
            dst_origins[path] = src_origins[path]
            _merge_plain(dst[key], value, path, src_origins, dst_origins)
        else:
            dst[key] = value
            for sub_path, origin in src_origins.items():
                if sub_path[: len(path)] == path:
                    dst_origins[sub_path] = origin


# --- typed merge into the defaults (yacs' _merge_a_into_b) ------------------------------------


def _merge_tree(node: CfgNode, data: Mapping[str, Any], prefix: tuple[str, ...], origins: _Origins) -> None:
    for key, raw in data.items():
        path = (*prefix, key)
        full_key = ".".join(path)
        source = origins[path]
        if key not in node:
            raise ConfigError(f"{source}: unknown config key {full_key}")
        default = node[key]
        if isinstance(default, CfgNode):
            if not isinstance(raw, dict):
                value = _decode_value(raw)
                raise ConfigError(
                    f"{source}: {full_key} must be a mapping, got {_type_name(value)} ({value!r})"
                )
            _merge_tree(default, raw, path, origins)
        elif isinstance(raw, dict):
            raise ConfigError(f"{source}: {full_key} must be {_type_name(default)}, got a mapping")
        else:
            node[key] = _coerce(_decode_value(raw), default, full_key, source)


def _decode_value(value: Any) -> Any:
    """yacs' _decode_cfg_value: a string becomes the Python literal it spells, if it is one."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    # yacs catches ValueError/SyntaxError; the others (absurd nesting, NUL bytes) also mean
    # "not a literal" rather than a crash.
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _coerce(value: Any, default: Any, full_key: str, source: str) -> Any:
    """yacs' _check_and_coerce_cfg_value_type, with a one-line ConfigError."""
    if type(value) is type(default):
        return value
    if type(default) is tuple and type(value) is list:
        return tuple(value)
    if type(default) is list and type(value) is tuple:
        return list(value)
    if (value is None and type(default) in _BASIC_TYPES) or (default is None and type(value) in _BASIC_TYPES):
        return value
    raise ConfigError(
        f"{source}: {full_key} must be {_type_name(default)}, got {_type_name(value)} ({value!r})"
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


# --- dump ----------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists (``[res2, res3]``), like the official YAML files."""


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def _yaml_data(value: Any) -> Any:
    if isinstance(value, CfgNode):
        return {key: _yaml_data(sub) for key, sub in value.items()}
    if _holds_tuple(value):
        return repr(value)
    if isinstance(value, str) and _decode_value(value) != value:
        return repr(value)
    return copy.deepcopy(value)


def _holds_tuple(value: Any) -> bool:
    if isinstance(value, tuple):
        return True
    if isinstance(value, list):
        return any(_holds_tuple(item) for item in value)
    return False
