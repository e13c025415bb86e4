"""Reading detectron2 checkpoints safely and checking them against the model.

Checkpoints are untrusted files: a pickle can run arbitrary code while it is read. So ``.pth``/``.pt``
files go through ``torch.load(weights_only=True)`` with only numpy's array/dtype globals added to its
allow-list, and model-zoo ``.pkl`` files through a restricted unpickler that admits the same numpy
globals and nothing that can run code. ``weights_only=False`` is never used.

Loading is strict (unlike detectron2, which only logs missing/unexpected keys and drops shape
mismatches): any mismatch is one CheckpointError that lists it, and so are NaN or infinite weights.
FrozenBN ``running_var`` is used as stored (PanopticFCN checkpoints are FrozenBN version 3: no eps
correction on load).
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from panoptic_deploy.errors import CheckpointError
from panoptic_deploy.fileio import PathLike

_TORCH_SUFFIXES = (".pth", ".pt")
_PICKLE_SUFFIXES = (".pkl",)

# numpy's array-rebuilding function, whatever module it lives in (numpy.core in 1.x, numpy._core in 2.x).
_reduced_array = np.empty(0).__reduce__()
assert isinstance(_reduced_array, tuple)
_reconstruct: Callable[..., Any] = _reduced_array[0]

# Names under which pickles written by numpy 1.x and 2.x refer to it.
_RECONSTRUCT_NAMES = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")

# dtype classes (numpy.dtypes.Float32DType, ...): torch's weights-only unpickler must be allowed to
# BUILD dtype instances of these types. Only plain numeric dtypes; object/void/string dtypes stay refused.
_NUMERIC_DTYPE_CLASSES: list[type[Any]] = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdFD"]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to latin-1: pickle protocol <3 stores array bytes as latin-1 text."""
    if encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"refused global _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# Globals a model-zoo pickle may reference: numpy arrays, their dtypes, the latin-1 bytes helper
# of protocol-2 pickles, and OrderedDict (the container of every torch state dict). None can run code.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): OrderedDict,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list (``name`` is ``module.qualname``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of ``_PICKLE_GLOBALS``; everything else is refused
    before it is imported, so nothing in the file can run code."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _refusal(path: PathLike, name: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused to load: the pickle references {name}, which is not allowed in a checkpoint "
        "(only tensors, numpy arrays and plain containers are)"
    )


# Lines of torch's weights-only error text that are advice, not the reason.
_TORCH_BOILERPLATE = (
    "Weights only load failed",
    "Check the documentation",
    "Please file an issue",
    "(1)",
    "(2)",
)


def _one_line(exc: BaseException) -> str:
    """A short one-line description of a load failure (torch's messages span many lines)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    detail = (reasons or lines or [""])[0]
    detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return detail if len(detail) <= 200 else detail[:197] + "..."


def _load_torch(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` plus numpy arrays, nothing else."""
    allowed: list[Any] = [
        *[(_reconstruct, name) for name in _RECONSTRUCT_NAMES],
        np.ndarray,
        np.dtype,
        *_NUMERIC_DTYPE_CLASSES,
    ]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure of an untrusted file is a bad checkpoint
        # torch names the refused global as "GLOBAL module.name" (wording varies between versions).
        refused = re.search(r"\bGLOBAL (\S+)", str(exc))
        if refused:
            raise _refusal(path, refused.group(1)) from None
        # A file the weights-only unpickler cannot parse (e.g. pickle protocol >2) is never retried unsafely.
        how = " with torch.load(weights_only=True)" if "Weights only load failed" in str(exc) else ""
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint{how} ({_one_line(exc)})") from None


def _load_pickle(path: Path) -> Any:
    """A detectron2 model-zoo ``.pkl`` through the numpy-only unpickler."""
    try:
        with path.open("rb") as f:
            # latin-1 as detectron2 does, for pickles written by Python 2 (their str holds array bytes).
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise _refusal(path, exc.name) from None
    except Exception as exc:  # truncated, corrupt or not a pickle at all
        raise CheckpointError(f"{path}: not a readable pickle checkpoint ({_one_line(exc)})") from None


def _to_tensor(path: PathLike, key: str, value: object) -> torch.Tensor:
    """A CPU tensor from a checkpoint value (tensor or numeric numpy array)."""
    if isinstance(value, torch.Tensor):
        return value.detach()  # a Parameter becomes a plain tensor
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise CheckpointError(f"{path}: key {key!r} is a numpy array of unsupported dtype {value.dtype}")
        # Own, writable, native-byte-order copy: torch.from_numpy rejects big-endian and warns on read-only.
        native = np.array(value, dtype=value.dtype.newbyteorder("="), order="C", copy=True)
        try:
            return torch.from_numpy(native)
        except TypeError as exc:
            raise CheckpointError(f"{path}: key {key!r}: {exc}") from None
    raise CheckpointError(
        f"{path}: key {key!r} holds a {type(value).__name__}, expected a tensor or numpy array"
    )


def _state_dict_from(path: PathLike, obj: object) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object, detectron2 style."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a dict (state dict or {{'model': ...}}), got {type(obj).__name__}"
        )
    # detectron2 treats a dict without "model" as a bare state dict; other top-level keys (optimizer,
    # scheduler, iteration, __author__, matching_heuristics) are ignored.
    state = obj.get("model", obj)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'model' holds a {type(state).__name__}, expected a state dict")
    for key in state:
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: state dict key {key!r} is not a string")
    keys = [key for key in state if key != "_metadata"]
    if not keys:
        raise CheckpointError(f"{path}: the state dict holds no tensors")
    # DataParallel prefix: stripped only when EVERY key has it (detectron2's rule).
    prefix = "module." if all(key.startswith("module.") for key in keys) else ""
    return {key[len(prefix) :]: _to_tensor(path, key, state[key]) for key in keys}


def read_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a detectron2 checkpoint (``.pth``/``.pt`` torch file or model-zoo ``.pkl``) safely.

    Returns key -> CPU tensor (numpy arrays converted), without a ``module.`` prefix or ``_metadata``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _TORCH_SUFFIXES + _PICKLE_SUFFIXES:
        raise CheckpointError(f"{p}: unknown checkpoint extension {p.suffix!r} (expected .pth, .pt or .pkl)")
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    obj = _load_torch(p) if suffix in _TORCH_SUFFIXES else _load_pickle(p)
    return _state_dict_from(p, obj)


# The three tower convs of the position head: deformable (DCNv2, the official default) or plain (nodeform).
_TOWER = r"^position_head\.position_head\.position_head_head_\d+\."
_DCN_TOWER_KEY = re.compile(_TOWER + r"(dcnv2|offset_mask_conv)\.")
_PLAIN_TOWER_KEY = re.compile(_TOWER + r"(weight$|norm\.)")


def _few(names: Iterable[str], limit: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def _position_head_hint(path: PathLike, expected: Iterable[str], state: Iterable[str]) -> str | None:
    """Plain words for the DCN-vs-nodeform position-head mismatch, or None if it is not that."""
    file_dcn = any(_DCN_TOWER_KEY.match(k) for k in state)
    file_plain = any(_PLAIN_TOWER_KEY.match(k) for k in state)
    model_dcn = any(_DCN_TOWER_KEY.match(k) for k in expected)
    model_plain = any(_PLAIN_TOWER_KEY.match(k) for k in expected)
    if file_dcn and not file_plain and model_plain and not model_dcn:
        return (
            f"{path} holds a deformable (DCNv2) position head but the config has "
            "MODEL.POSITION_HEAD.DEFORM False; use the official config (DEFORM True) or a nodeform checkpoint"
        )
    if file_plain and not file_dcn and model_dcn and not model_plain:
        return (
            f"{path} holds a plain (nodeform, non-deformable) position head but the config has "
            "MODEL.POSITION_HEAD.DEFORM True; use the nodeform config (DEFORM False) or a checkpoint "
            "with the deformable head"
        )
    return None


def check_state_dict(
    expected: Mapping[str, Sequence[int]], state: Mapping[str, torch.Tensor], path: PathLike
) -> None:
    """Raise one CheckpointError listing every missing key, unexpected key, shape mismatch and
    non-floating tensor of ``state`` against ``expected`` (key -> shape; every PanopticFCN entry is
    floating point: FrozenBN has no integer ``num_batches_tracked``)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    common = [k for k in expected if k in state]
    shape_bad = [k for k in common if tuple(state[k].shape) != tuple(int(s) for s in expected[k])]
    dtype_bad = [k for k in common if not state[k].is_floating_point()]
    if not (missing or unexpected or shape_bad or dtype_bad):
        return

    hint = _position_head_hint(path, expected, state)
    tower_only = all(_DCN_TOWER_KEY.match(k) or _PLAIN_TOWER_KEY.match(k) for k in missing + unexpected)
    if hint is not None and tower_only and not (shape_bad or dtype_bad):
        raise CheckpointError(hint)

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if shape_bad:
        details = [
            f"{k} (checkpoint {list(state[k].shape)} vs model {[int(s) for s in expected[k]]})"
            for k in sorted(shape_bad)
        ]
        problems.append(f"{len(shape_bad)} shape mismatch(es): {_few(details)}")
    if dtype_bad:
        details = [f"{k} ({state[k].dtype})" for k in sorted(dtype_bad)]
        problems.append(f"{len(dtype_bad)} non-floating tensor(s) where floats are expected: {_few(details)}")
    message = f"{path} does not fit the model: " + "; ".join(problems)
    if hint is not None:
        message += f". Note: {hint}"
    raise CheckpointError(message)


def check_finite(state: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """One CheckpointError naming every tensor that holds a NaN or an infinity (with how many of each).

    Such a weight never gives an error later: the network's outputs turn NaN, every score comparison is
    false, and the prediction is silently empty.
    """
    bad = []
    for key in sorted(state):
        tensor = state[key]
        if not tensor.is_floating_point() and not tensor.is_complex():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int((~finite).sum()) - nan
        parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
        bad.append(f"{key} ({', '.join(p for p in parts if p)} of {tensor.numel()})")
    if bad:
        raise CheckpointError(
            f"{path}: refusing non-finite weights: {len(bad)} tensor(s) hold NaN or Inf values: {_few(bad)}"
        )


def load_weights(model: torch.nn.Module, path: PathLike) -> None:
    """Read ``path``, check it against ``model.state_dict()`` and for NaN/Inf values, load it strictly in the
    model's dtypes."""
    state = read_checkpoint(path)
    model_state = model.state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in model_state.items()}, state, path)
    cast = {k: v.to(dtype=model_state[k].dtype) for k, v in state.items()}
    check_finite(cast, path)  # after the cast: a float64 value beyond float32's range becomes Inf there
    try:
        model.load_state_dict(cast, strict=True)
    except RuntimeError as exc:  # should not happen after the check; keep the one-line contract
        raise CheckpointError(f"{path}: {_one_line(exc)}") from None
