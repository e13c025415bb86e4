"""Export the network part to ONNX at one static input size, checked numerically.

:func:`export_onnx`: ``PanopticFCN.forward`` (1×3×H×W image -> the seven fixed-size outputs) with
``torch.onnx.export(dynamo=True)``; the legacy TorchScript exporter is the fallback when the dynamo exporter
raises (docs/pipeline.md records both on this model). The file is kept only if ONNX Runtime (CPU) reproduces
PyTorch on a real image prepared at exactly that size (:mod:`panoptic_deploy.compare`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from panoptic_deploy.compare import (
    OutputError,
    PanopticAgreement,
    Tolerance,
    as_numpy_outputs,
    compare_outputs,
    panoptic_agreement,
    panoptic_pair,
    tolerance_failures,
)
from panoptic_deploy.defaults import schema_default
from panoptic_deploy.errors import ExportError, first_line
from panoptic_deploy.fileio import PathLike, atomic_path, file_sha256
from panoptic_deploy.geometry import Size
from panoptic_deploy.modeling import PanopticFCN
from panoptic_deploy.modeling.deform_conv import (
    DEFORMCONV_MIN_OPSET,
    ExportMode,
    deform_conv_export_mode,
    onnx_deformconv_translation_table,
    register_onnx_deformconv_symbolic,
)
from panoptic_deploy.onnx_utils import quiet_converters
from panoptic_deploy.preprocess import PreparedImage, prepare_at_size
from panoptic_deploy.spec import ModelSpec
from panoptic_deploy.vocab import INPUT_NAME, OUTPUT_NAMES

_LOG = logging.getLogger(__name__)
Exporter = Literal["auto", "dynamo", "legacy"]
DEFAULT_OPSET: int = schema_default("export", "opset")
# FP32 ONNX Runtime vs FP32 PyTorch. Every float output is a probability or score in [0, 1]; measured
# differences are below 1e-4 (docs/pipeline.md), so 1e-3 leaves a 10x margin while any real export bug
# (a wrong op, a swapped axis) moves values by 1e-2 or more.
DEFAULT_EXPORT_TOLERANCE = Tolerance(
    atol=schema_default("export", "atol"), rtol=schema_default("export", "rtol"), max_flips=0
)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how well ONNX Runtime reproduced PyTorch on the check image."""

    output: str
    exporter: str  # "dynamo" | "legacy"
    fallback_reason: str | None  # why the dynamo exporter was not used (exporter "auto" only)
    opset: int  # as written in the file
    opset_requested: int
    deform_conv: str
    input_shape: tuple[int, int, int, int]
    nodes: int
    file_bytes: int
    sha256: str
    export_seconds: float
    verify_image: str
    tolerance: Tolerance
    errors: dict[str, OutputError]
    instances_ref: int
    instances_onnx: int
    instances_matched: int
    panoptic: PanopticAgreement
    torch_version: str = torch.__version__

    def summary(self) -> str:
        """A few lines for logs and the CLI."""
        lines = [
            f"wrote {self.output}: {self.exporter} exporter, opset {self.opset}, {self.nodes} nodes, "
            f"{self.file_bytes / 1e6:.1f} MB, input {list(self.input_shape)}, {self.export_seconds:.1f} s",
        ]
        if self.opset != self.opset_requested:
            lines.append(
                f"  opset {self.opset_requested} was asked for; the exporter kept opset {self.opset}"
            )
        if self.fallback_reason:
            lines.append(f"  dynamo exporter failed: {self.fallback_reason}")
        lines.append(
            f"  checked on {self.verify_image}: tolerance atol {self.tolerance.atol:g} rtol "
            f"{self.tolerance.rtol:g}, max flips {self.tolerance.max_flips}"
        )
        lines.extend(f"  {_error_line(e)}" for e in self.errors.values())
        lines.append(
            f"  instances: {self.instances_ref} torch, {self.instances_onnx} onnx, "
            f"{self.instances_matched} matched; panoptic PQ vs torch {100 * self.panoptic.pq:.2f}, pixel "
            f"agreement {100 * self.panoptic.pixel_agreement:.3f}%"
        )
        return "\n".join(lines)


def _error_line(e: OutputError) -> str:
    if e.kind == "float":
        if e.compared == 0:
            return f"{e.name}: nothing to compare"
        return f"{e.name}: max abs {e.max_abs:.3g}, max rel {e.max_rel:.3g} over {e.compared} values"
    return f"{e.name}: {e.mismatches} of {e.compared} differ"


def _export_dynamo(
    model: PanopticFCN, image: torch.Tensor, path: Path, opset: int, deform: ExportMode
) -> None:
    table = onnx_deformconv_translation_table() if deform == "onnx_deformconv" else None
    with quiet_converters(ignore_warnings=True), deform_conv_export_mode(deform):
        program = torch.onnx.export(
            model,
            (image,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            custom_translation_table=table,
            external_data=False,
            verbose=False,
        )
        if program is None:
            raise ExportError("torch.onnx.export(dynamo=True) returned no program")
        program.save(str(path), external_data=False)


def _export_legacy(
    model: PanopticFCN, image: torch.Tensor, path: Path, opset: int, deform: ExportMode
) -> None:
    if deform == "onnx_deformconv":
        register_onnx_deformconv_symbolic(opset)
    with quiet_converters(ignore_warnings=True), deform_conv_export_mode(deform):
        torch.onnx.export(
            model,
            (image,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            do_constant_folding=True,
        )


def _run_exporter(
    model: PanopticFCN, image: torch.Tensor, path: Path, opset: int, exporter: Exporter, deform: ExportMode
) -> tuple[str, str | None]:
    """Export to ``path``; returns (exporter used, why dynamo was not used or None)."""
    if exporter == "legacy":
        _export_legacy(model, image, path, opset, deform)
        return "legacy", None
    try:
        _export_dynamo(model, image, path, opset, deform)
        return "dynamo", None
    except Exception as exc:  # the dynamo exporter raises many types (torch._dynamo, onnxscript, ...)
        if exporter == "dynamo":
            raise ExportError(f"{path}: torch.onnx.export(dynamo=True) failed: {first_line(exc)}") from exc
        reason = first_line(exc)
        _LOG.warning("dynamo exporter failed (%s); falling back to the legacy exporter", reason)
    path.unlink(missing_ok=True)
    _export_legacy(model, image, path, opset, deform)
    return "legacy", reason


def _check_io(onnx_model: Any, input_shape: tuple[int, ...], where: str) -> None:
    """The graph has the named static input and the seven named outputs with static shapes."""
    graph = onnx_model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]

    def dims(value: Any) -> list[int | str]:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim
        ]

    if [v.name for v in inputs] != [INPUT_NAME] or dims(inputs[0]) != list(input_shape):
        got = [(v.name, dims(v)) for v in inputs]
        raise ExportError(f"{where}: expected one input '{INPUT_NAME}' {list(input_shape)}, got {got}")
    names = [v.name for v in graph.output]
    if names != list(OUTPUT_NAMES):
        raise ExportError(f"{where}: outputs are {names}, expected {list(OUTPUT_NAMES)}")
    for value in graph.output:
        shape = dims(value)
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise ExportError(f"{where}: output '{value.name}' has a dynamic shape {shape}")


def ort_outputs(session: Any, image: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
    """The named outputs of an ONNX Runtime session on one 1×3×H×W image, as numpy."""
    results = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
    return as_numpy_outputs(dict(zip(OUTPUT_NAMES, results, strict=True)))


def _written_graph(path: Path, input_shape: tuple[int, ...], output: Path, opset: int) -> tuple[int, int]:
    """(nodes, opset) of the file the exporter wrote, after checking its named static I/O."""
    import onnx

    onnx_model = onnx.load(str(path))
    _check_io(onnx_model, input_shape, str(output))
    # The dynamo exporter writes opset 18 and converts down on request; when that conversion fails it
    # keeps opset 18 and only logs it, so the file's own opset is what gets reported.
    written_opset = next(
        (int(o.version) for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), opset
    )
    if written_opset != opset:
        _LOG.warning("%s: opset %d was asked for, the exporter wrote opset %d", output, opset, written_opset)
    return len(onnx_model.graph.node), written_opset


def _ort_check_outputs(
    path: Path, threads: int | None, prepared: PreparedImage, output: Path, used: str
) -> dict[str, NDArray[Any]]:
    """ONNX Runtime's outputs of the written file on the check image."""
    from panoptic_deploy.engines.onnxruntime import make_ort_session

    try:
        session = make_ort_session(path, threads)
    except Exception as exc:  # ORT raises its own pybind exception types
        raise ExportError(
            f"{output}: ONNX Runtime cannot load the {used} export ({first_line(exc)})"
        ) from exc
    return ort_outputs(session, prepared.tensor.numpy())


def export_onnx(
    config: ModelSpec | PathLike,
    weights: PathLike,
    output: PathLike,
    input_hw: Sequence[int],
    verify_image: PathLike,
    opts: Sequence[str] = (),
    opset: int = DEFAULT_OPSET,
    *,
    exporter: Exporter = "auto",
    deform_conv: ExportMode = "grid_sample",
    tolerance: Tolerance = DEFAULT_EXPORT_TOLERANCE,
    threads: int | None = None,
    buckets: Sequence[Size] | None = None,
) -> ExportReport:
    """Export the network of ``config`` + ``weights`` to ``output`` with a static 1×3×H×W input.

    (H, W) = ``input_hw``.

    ``verify_image`` must pad to exactly ``input_hw`` (with ``buckets``: have it as its smallest bucket);
    ONNX Runtime's outputs on it must match PyTorch's within ``tolerance`` (floats: ``atol + rtol·|ref|``;
    bool/int outputs: at most ``max_flips`` mismatches after instance matching,
    :mod:`panoptic_deploy.compare`), else :class:`ExportError` and no file.
    ``exporter``: "auto" (dynamo, legacy if dynamo raises), "dynamo" or "legacy". ``deform_conv``: how DCNv2
    layers are written ("grid_sample", any opset >= 16; "onnx_deformconv", opset >= 19).
    """
    from panoptic_deploy.checkpoint import load_weights
    from panoptic_deploy.modeling import build_model

    if deform_conv == "onnx_deformconv" and opset < DEFORMCONV_MIN_OPSET:
        raise ExportError(
            f"{output}: deform_conv 'onnx_deformconv' needs opset >= {DEFORMCONV_MIN_OPSET}, got {opset}"
        )
    model = build_model(ModelSpec.of(config, opts).cfg)
    load_weights(model, weights)
    prepared = prepare_at_size(verify_image, model.input_params, input_hw, buckets)
    input_shape = (1, 3, int(input_hw[0]), int(input_hw[1]))
    with torch.no_grad():
        reference = model(prepared.tensor)
    ref_np = as_numpy_outputs(reference)

    output = Path(output)
    with atomic_path(output) as tmp:
        start = time.perf_counter()
        used, fallback_reason = _run_exporter(model, prepared.tensor, tmp, opset, exporter, deform_conv)
        export_seconds = time.perf_counter() - start
        nodes, written_opset = _written_graph(tmp, input_shape, output, opset)
        onnx_np = _ort_check_outputs(tmp, threads, prepared, output, used)
        errors, match = compare_outputs(onnx_np, ref_np, model.inference.inst_thres)
        problems = tolerance_failures(errors, onnx_np, ref_np, match, tolerance)
        if problems:
            raise ExportError(
                f"{output}: ONNX Runtime differs from PyTorch on {verify_image} ({used} exporter): "
                + "; ".join(problems)
            )
        agreement = _panoptic_check(onnx_np, ref_np, prepared, model, str(verify_image))
        file_bytes = tmp.stat().st_size
        sha256 = file_sha256(tmp)
    return ExportReport(
        output=str(output),
        exporter=used,
        fallback_reason=fallback_reason,
        opset=written_opset,
        opset_requested=opset,
        deform_conv=deform_conv,
        input_shape=input_shape,
        nodes=nodes,
        file_bytes=file_bytes,
        sha256=sha256,
        export_seconds=round(export_seconds, 2),
        verify_image=str(verify_image),
        tolerance=tolerance,
        errors=errors,
        instances_ref=match.ref_valid,
        instances_onnx=match.test_valid,
        instances_matched=match.matched,
        panoptic=agreement,
    )


def _panoptic_check(
    test: Mapping[str, NDArray[Any]],
    ref: Mapping[str, NDArray[Any]],
    prepared: PreparedImage,
    model: PanopticFCN,
    name: str,
) -> PanopticAgreement:
    from panoptic_deploy.postprocess import postprocess
    from panoptic_deploy.predict import segments_info

    pairs = []
    for outputs in (test, ref):
        result = postprocess(dict(outputs), prepared.image_size, prepared.orig_size, model.inference)
        pairs.append(panoptic_pair(result.panoptic_seg, segments_info(result)))
    return panoptic_agreement([pairs[0]], [pairs[1]], names=[name])
