"""Export the network part to ONNX at one static input size, and simplify it; both checked numerically.

* :func:`export_onnx`: ``PanopticFCN.forward`` (1×3×H×W image -> the seven fixed-size outputs) with
  ``torch.onnx.export(dynamo=True)``; the legacy TorchScript exporter is the fallback when the dynamo
  exporter raises (docs/pipeline.md records both on this model). The file is kept only if ONNX Runtime (CPU)
  reproduces PyTorch on a real image prepared at exactly that size (:mod:`panoptic_deploy.compare`).
* :func:`simplify_onnx`: onnxsim (the default) or onnxslim, kept only if its outputs equal the export's on the
  given inputs; the simplifier and its version are recorded in the model's metadata
  (:data:`SIMPLIFIER_METADATA_KEY`).

Every artefact is written through :func:`panoptic_deploy.fileio.atomic_path`: on any failure no file is left.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

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
from panoptic_deploy.errors import ExportError, ImageError, PanopticDeployError
from panoptic_deploy.fileio import atomic_path, file_sha256
from panoptic_deploy.modeling import INPUT_NAME, OUTPUT_NAMES, InputParams, PanopticFCN
from panoptic_deploy.modeling.deform_conv import (
    DEFORMCONV_MIN_OPSET,
    ExportMode,
    deform_conv_export_mode,
    onnx_deformconv_translation_table,
    register_onnx_deformconv_symbolic,
)
from panoptic_deploy.modeling.panoptic_fcn import input_params_from_config
from panoptic_deploy.preprocess import PreparedImage, network_input_shape, prepare_image, read_image

_LOG = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Exporter = Literal["auto", "dynamo", "legacy"]
Simplifier = Literal["onnxsim", "onnxslim"]
SIMPLIFIERS: tuple[Simplifier, ...] = ("onnxsim", "onnxslim")
DEFAULT_SIMPLIFIER: Simplifier = "onnxsim"
# metadata_props key of a simplified model: "<simplifier> <version>", e.g. "onnxsim 0.8.1".
SIMPLIFIER_METADATA_KEY = "panoptic_deploy.simplifier"

DEFAULT_OPSET = 18
# FP32 ONNX Runtime vs FP32 PyTorch. Every float output is a probability or score in [0, 1]; measured
# differences are below 1e-4 (docs/pipeline.md), so 1e-3 leaves a 10x margin while any real export bug
# (a wrong op, a swapped axis) moves values by 1e-2 or more.
DEFAULT_EXPORT_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-3, max_flips=0)
# Simplification must not change the numbers: onnxsim and onnxslim fold constants, fuse nothing numerically.
DEFAULT_SIMPLIFY_TOLERANCE = Tolerance(atol=1e-5, rtol=0.0, max_flips=0)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


# ---------------------------------------------------------------------------------------------------------
# Input sizes and verification images


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image as :func:`preprocess.read_image` decodes it (EXIF orientation applied),
    from the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such image file") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from exc
    return height, width


def input_hw_for(cfg: Any, image_path: PathLike, opts: Sequence[str] = ()) -> tuple[int, int]:
    """Padded network input (H, W) of ``image_path`` under the config's test resize.

    ``cfg``: a loaded config (:func:`panoptic_deploy.config.load_config`) or a config file path (then
    ``opts`` are its overrides).
    """
    if isinstance(cfg, (str, os.PathLike)):
        from panoptic_deploy.config import load_config

        cfg = load_config(Path(cfg), opts)
    return network_input_shape(*image_size(image_path), input_params_from_config(cfg))


def model_name(base: str, input_hw: Sequence[int]) -> str:
    """Artefact name of a model at one input size: ``<base>_<H>x<W>`` (e.g. ``demo_416x544``)."""
    height, width = (int(v) for v in input_hw)
    return f"{base}_{height}x{width}"


def prepare_at_size(path: PathLike, params: InputParams, input_hw: Sequence[int]) -> PreparedImage:
    """Read and pre-process ``path``; :class:`ImageError` unless its padded size equals ``input_hw``."""
    prepared = prepare_image(read_image(path, params.input_format), params)
    got = tuple(prepared.tensor.shape[-2:])
    want = tuple(int(v) for v in input_hw)
    if got != want:
        raise ImageError(
            f"{path}: pads to network input {got[0]}x{got[1]} (H x W), the model is exported for "
            f"{want[0]}x{want[1]}"
        )
    return prepared


def prepare_verify_inputs(
    config: PathLike, images: Sequence[PathLike], input_hw: Sequence[int], opts: Sequence[str] = ()
) -> list[NDArray[np.float32]]:
    """Network inputs (1×3×H×W float32) of ``images`` for :func:`simplify_onnx`; each must pad to
    ``input_hw``."""
    from panoptic_deploy.config import load_config

    params = input_params_from_config(load_config(Path(config), opts))
    return [prepare_at_size(p, params, input_hw).tensor.numpy() for p in images]


def onnx_input_hw(path: PathLike) -> tuple[int, int]:
    """(H, W) of the static 1×3×H×W input of an exported model (weights are not loaded)."""
    from panoptic_deploy.engines.sidecar import summarize_onnx

    try:
        shape = summarize_onnx(path).static_input_shape
    except PanopticDeployError as exc:
        raise ExportError(str(exc)) from exc
    if len(shape) != 4:
        raise ExportError(f"{path}: input shape {list(shape)} is not 1x3xHxW")
    return shape[2], shape[3]


# ---------------------------------------------------------------------------------------------------------
# Reports


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


# ---------------------------------------------------------------------------------------------------------
# Export


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporters' progress prints and warnings (deprecation of the legacy exporter, torchvision
    ops not registered); errors still raise."""
    sink = io.StringIO()
    # onnxscript / onnx_ir log every optimisation pass at INFO (hundreds of lines per export).
    loggers = [
        logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "onnxslim", "onnxsim")
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _export_dynamo(
    model: PanopticFCN, image: torch.Tensor, path: Path, opset: int, deform: ExportMode
) -> None:
    table = onnx_deformconv_translation_table() if deform == "onnx_deformconv" else None
    with _quiet_export(), deform_conv_export_mode(deform):
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
    with _quiet_export(), deform_conv_export_mode(deform):
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
            raise ExportError(f"{path}: torch.onnx.export(dynamo=True) failed: {_first_line(exc)}") from exc
        reason = _first_line(exc)
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


def _ort_outputs(session: Any, image: NDArray[np.float32]) -> dict[str, NDArray[Any]]:
    results = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
    return as_numpy_outputs(dict(zip(OUTPUT_NAMES, results, strict=True)))


def export_onnx(
    config: PathLike,
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
) -> ExportReport:
    """Export the network of ``config`` + ``weights`` to ``output`` with a static 1×3×H×W input.

    (H, W) = ``input_hw``.

    ``verify_image`` must pad to exactly ``input_hw``; ONNX Runtime's outputs on it must match PyTorch's
    within ``tolerance`` (floats: ``atol + rtol·|ref|``; bool/int outputs: at most ``max_flips`` mismatches
    after instance matching, :mod:`panoptic_deploy.compare`), else :class:`ExportError` and no file.
    ``exporter``: "auto" (dynamo, legacy if dynamo raises), "dynamo" or "legacy". ``deform_conv``: how DCNv2
    layers are written ("grid_sample", any opset >= 16; "onnx_deformconv", opset >= 19).
    """
    from panoptic_deploy.checkpoint import load_weights
    from panoptic_deploy.config import load_config
    from panoptic_deploy.modeling import build_model
    from panoptic_deploy.precision import make_ort_session

    if deform_conv == "onnx_deformconv" and opset < DEFORMCONV_MIN_OPSET:
        raise ExportError(
            f"{output}: deform_conv 'onnx_deformconv' needs opset >= {DEFORMCONV_MIN_OPSET}, got {opset}"
        )
    model = build_model(load_config(Path(config), opts))
    load_weights(model, weights)
    prepared = prepare_at_size(verify_image, model.input_params, input_hw)
    input_shape = (1, 3, int(input_hw[0]), int(input_hw[1]))
    with torch.no_grad():
        reference = model(prepared.tensor)
    ref_np = as_numpy_outputs(reference)

    import onnx

    output = Path(output)
    with atomic_path(output) as tmp:
        start = time.perf_counter()
        used, fallback_reason = _run_exporter(model, prepared.tensor, tmp, opset, exporter, deform_conv)
        export_seconds = time.perf_counter() - start
        onnx_model = onnx.load(str(tmp))
        _check_io(onnx_model, input_shape, str(output))
        nodes = len(onnx_model.graph.node)
        # The dynamo exporter writes opset 18 and converts down on request; when that conversion fails it
        # keeps opset 18 and only logs it, so the file's own opset is what gets reported.
        written_opset = next(
            (int(o.version) for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), opset
        )
        if written_opset != opset:
            _LOG.warning(
                "%s: opset %d was asked for, the exporter wrote opset %d", output, opset, written_opset
            )
        del onnx_model
        try:
            session = make_ort_session(tmp, threads)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise ExportError(
                f"{output}: ONNX Runtime cannot load the {used} export ({_first_line(exc)})"
            ) from exc
        onnx_np = _ort_outputs(session, prepared.tensor.numpy())
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


# ---------------------------------------------------------------------------------------------------------
# Simplify


def _simplifier_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _run_simplifier(simplifier: str, model: Any, where: Path) -> Any:
    """``model`` simplified by ``simplifier``; :class:`ExportError` (one line) if it is unknown or missing."""
    if simplifier not in SIMPLIFIERS:
        raise ExportError(f"{where}: unknown simplifier {simplifier!r}; use one of {', '.join(SIMPLIFIERS)}")
    try:
        module = importlib.import_module(simplifier)
    except ImportError as exc:
        other = next(s for s in SIMPLIFIERS if s != simplifier)
        raise ExportError(
            f"{where}: simplifier '{simplifier}' is not installed ({_first_line(exc)}); install it with "
            f"'pip install {simplifier}' or choose '{other}' (config export.simplifier, CLI --simplifier)"
        ) from None
    with _quiet_export():
        if simplifier == "onnxsim":
            # check_n=0: onnxsim's own random-input check is replaced by the check on real inputs below.
            simplified, _ = module.simplify(model, check_n=0)
        else:
            simplified = module.slim(model)
    if simplified is None:
        raise ExportError(f"{where}: {simplifier} returned no model")
    return simplified


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

    from panoptic_deploy.onnx_scopes import carry_module_scopes
    from panoptic_deploy.precision import make_ort_session

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not verify_inputs:
        raise ExportError(f"{onnx_out}: simplify needs at least one input to check the result on")
    if simplifier not in SIMPLIFIERS:
        known = ", ".join(SIMPLIFIERS)
        raise ExportError(f"{onnx_out}: unknown simplifier {simplifier!r}; use one of {known}")
    try:
        original = onnx.load(str(onnx_in))
    except Exception as exc:  # onnx raises DecodeError/OSError/... for damaged or missing files
        raise ExportError(f"{onnx_in}: not a readable ONNX model ({_first_line(exc)})") from exc
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
    version = _simplifier_version(simplifier)
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
        session_in = make_ort_session(onnx_in, threads)
        session_out = make_ort_session(tmp, threads)
        worst: dict[str, float] = {}
        flips = 0
        for k, array in enumerate(verify_inputs):
            a = _ort_outputs(session_out, np.ascontiguousarray(array, dtype=np.float32))
            b = _ort_outputs(session_in, np.ascontiguousarray(array, dtype=np.float32))
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
