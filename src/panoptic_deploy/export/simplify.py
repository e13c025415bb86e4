"""Simplify an exported ONNX model with onnxsim (the default) or onnxslim, checked numerically.

:func:`simplify_onnx` keeps the result only if its outputs equal the export's on the given inputs; the
simplifier and its version are recorded in the model's metadata (:data:`SIMPLIFIER_METADATA_KEY`).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from panoptic_deploy.compare import Tolerance, compare_outputs, tolerance_failures
from panoptic_deploy.defaults import schema_default
from panoptic_deploy.errors import ExportError, first_line
from panoptic_deploy.export.onnx_export import ort_outputs
from panoptic_deploy.fileio import PathLike, atomic_path, file_sha256
from panoptic_deploy.host import dist_version
from panoptic_deploy.onnx_scopes import carry_module_scopes
from panoptic_deploy.onnx_utils import quiet_converters
from panoptic_deploy.vocab import SIMPLIFIERS

Simplifier = Literal["onnxsim", "onnxslim"]
DEFAULT_SIMPLIFIER: Simplifier = schema_default("export", "simplifier")
# metadata_props key of a simplified model: "<simplifier> <version>", e.g. "onnxsim 0.8.1".
SIMPLIFIER_METADATA_KEY = "panoptic_deploy.simplifier"
# Simplification must not change the numbers: onnxsim and onnxslim fold constants, fuse nothing numerically.
DEFAULT_SIMPLIFY_TOLERANCE = Tolerance(atol=schema_default("export", "simplify_atol"), rtol=0.0, max_flips=0)


@dataclass(frozen=True)
class SimplifyReport:
    """What :func:`simplify_onnx` wrote, node counts before/after and the largest output difference."""

    output: str
    nodes_before: int
    nodes_after: int
    file_bytes: int
    sha256: str
    seconds: float
    simplifier: str  # "onnxsim" | "onnxslim"
    simplifier_version: str
    inputs_checked: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    discrete_mismatches: int = 0

    def summary(self) -> str:
        worst = max(self.max_abs_diff.values(), default=0.0)
        return (
            f"wrote {self.output}: {self.simplifier} {self.simplifier_version}, "
            f"{self.nodes_before} -> {self.nodes_after} "
            f"nodes in {self.seconds:.1f} s; on {self.inputs_checked} input(s) the largest float difference "
            f"is {worst:.3g}, bool/int mismatches {self.discrete_mismatches}"
        )


def _run_simplifier(simplifier: str, model: Any, where: Path) -> Any:
    """``model`` simplified by ``simplifier``; :class:`ExportError` (one line) if it is unknown or missing."""
    if simplifier not in SIMPLIFIERS:
        raise ExportError(f"{where}: unknown simplifier {simplifier!r}; use one of {', '.join(SIMPLIFIERS)}")
    try:
        module = importlib.import_module(simplifier)
    except ImportError as exc:
        other = next(s for s in SIMPLIFIERS if s != simplifier)
        raise ExportError(
            f"{where}: simplifier '{simplifier}' is not installed ({first_line(exc)}); install it with "
            f"'pip install {simplifier}' or choose '{other}' (config export.simplifier, CLI --simplifier)"
        ) from None
    with quiet_converters(ignore_warnings=True):
        if simplifier == "onnxsim":
            # check_n=0: onnxsim's own random-input check is replaced by the check on real inputs below.
            simplified, _ = module.simplify(model, check_n=0)
        else:
            simplified = module.slim(model)
    if simplified is None:
        raise ExportError(f"{where}: {simplifier} returned no model")
    return simplified


def _compare_on_inputs(
    onnx_in: Path,
    simplified: Path,
    verify_inputs: Sequence[NDArray[np.float32]],
    tolerance: Tolerance,
    threads: int | None,
    onnx_out: Path,
    simplifier: str,
) -> tuple[dict[str, float], int]:
    """(largest float difference per output, bool/int mismatches) of ``simplified`` against ``onnx_in`` over
    ``verify_inputs``; :class:`ExportError` at the first input outside ``tolerance``."""
    from panoptic_deploy.engines.onnxruntime import make_ort_session

    session_in = make_ort_session(onnx_in, threads)
    session_out = make_ort_session(simplified, threads)
    worst: dict[str, float] = {}
    flips = 0
    for k, array in enumerate(verify_inputs):
        a = ort_outputs(session_out, np.ascontiguousarray(array, dtype=np.float32))
        b = ort_outputs(session_in, np.ascontiguousarray(array, dtype=np.float32))
        errors, match = compare_outputs(a, b, inst_thres=0.4)
        problems = tolerance_failures(errors, a, b, match, tolerance)
        if problems:
            raise ExportError(
                f"{onnx_out}: simplified model ({simplifier}) differs from {onnx_in} on input #{k}: "
                + "; ".join(problems)
            )
        for name, err in errors.items():
            if err.kind == "float" and err.max_abs is not None:
                worst[name] = max(worst.get(name, 0.0), err.max_abs)
            flips += err.mismatches
    return worst, flips


def simplify_onnx(
    onnx_in: PathLike,
    onnx_out: PathLike,
    verify_inputs: Sequence[NDArray[np.float32]],
    *,
    simplifier: Simplifier = DEFAULT_SIMPLIFIER,
    tolerance: Tolerance = DEFAULT_SIMPLIFY_TOLERANCE,
    threads: int | None = None,
) -> SimplifyReport:
    """Simplify ``onnx_in`` with ``simplifier`` (onnxsim or onnxslim) into ``onnx_out``; kept only if, on
    every array of ``verify_inputs`` (1×3×H×W float32, e.g. from :func:`prepare_verify_inputs`), ONNX Runtime
    gives the same outputs for both models within ``tolerance`` (default: 1e-5 absolute, no bool/int change),
    else :class:`ExportError`. The simplifier and its version are written into the model's ``metadata_props``
    under :data:`SIMPLIFIER_METADATA_KEY`."""
    import onnx

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not verify_inputs:
        raise ExportError(f"{onnx_out}: simplify needs at least one input to check the result on")
    if simplifier not in SIMPLIFIERS:
        known = ", ".join(SIMPLIFIERS)
        raise ExportError(f"{onnx_out}: unknown simplifier {simplifier!r}; use one of {known}")
    try:
        original = onnx.load(str(onnx_in))
    except Exception as exc:  # onnx raises DecodeError/OSError/... for damaged or missing files
        raise ExportError(f"{onnx_in}: not a readable ONNX model ({first_line(exc)})") from exc
    nodes_before = len(original.graph.node)
    start = time.perf_counter()
    slim = _run_simplifier(simplifier, original, onnx_in)
    seconds = time.perf_counter() - start
    original_io = [
        (v.name, v.type.SerializeToString()) for v in (*original.graph.input, *original.graph.output)
    ]
    slim_io = [(v.name, v.type.SerializeToString()) for v in (*slim.graph.input, *slim.graph.output)]
    if original_io != slim_io:
        raise ExportError(f"{onnx_in}: {simplifier} changed the model's inputs or outputs")
    # Both simplifiers drop the nodes' metadata, where the dynamo exporter keeps each node's module scope:
    # carry it over by node name, so INT8 debugging can name modules (panoptic_deploy.onnx_scopes).
    carry_module_scopes(original, slim)
    version = dist_version(simplifier) or "unknown"
    onnx.helper.set_model_props(
        slim,
        {
            **{p.key: p.value for p in slim.metadata_props if p.key != SIMPLIFIER_METADATA_KEY},
            SIMPLIFIER_METADATA_KEY: f"{simplifier} {version}",
        },
    )

    with atomic_path(onnx_out) as tmp:
        onnx.save(slim, str(tmp))
        nodes_after = len(slim.graph.node)
        del slim, original
        worst, flips = _compare_on_inputs(
            onnx_in, tmp, verify_inputs, tolerance, threads, onnx_out, simplifier
        )
        file_bytes = tmp.stat().st_size
        sha256 = file_sha256(tmp)
    return SimplifyReport(
        output=str(onnx_out),
        nodes_before=nodes_before,
        nodes_after=nodes_after,
        file_bytes=file_bytes,
        sha256=sha256,
        seconds=round(seconds, 2),
        simplifier=simplifier,
        simplifier_version=version,
        inputs_checked=len(verify_inputs),
        max_abs_diff=worst,
        discrete_mismatches=flips,
    )


def read_simplifier(path: PathLike) -> str | None:
    """The "<simplifier> <version>" recorded in a simplified model (None if it has none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == SIMPLIFIER_METADATA_KEY), None)
