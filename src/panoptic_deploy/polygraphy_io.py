"""The evaluation inputs and the torch FP32 outputs as Polygraphy JSON, so that NVIDIA's own checker compares
an engine with our reference::

    polygraphy run results/engines/tensorrt/<gpu>/<model>.int8.engine --trt \\
        --load-inputs results/polygraphy/<model>.inputs.json \\
        --load-outputs results/polygraphy/<model>.torch_fp32.json

The layout is Polygraphy's JSON serialisation (``polygraphy/json/serde.py``, ``comparator/struct.py``,
checked against polygraphy 0.53): a NumPy array is ``{"array": <base64 of the .npy bytes>,
"polygraphy_class": "ndarray"}``; ``--load-inputs`` reads a list of feed dicts (input name -> array), one
per iteration; ``--load-outputs`` reads a ``RunResults``: ``{"lst": [[runner name, [IterationResult,
...]]], "polygraphy_class": "RunResults"}`` with ``IterationResult = {"outputs": {name: {"values": array,
"polygraphy_class": "LazyNumpyArray"}}, "runtime": seconds or null, "runner_name": name,
"polygraphy_class": "IterationResult"}``. ``LazyNumpyArray`` is the class's older name, which current
Polygraphy still decodes (an alias of ``LazyArray``) and older versions know, so one file serves both.

Nothing here imports Polygraphy; the tests load the files with Polygraphy itself and run ``polygraphy run``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from panoptic_deploy.errors import PanopticDeployError
from panoptic_deploy.fileio import PathLike, write_text_atomic

TYPE_MARKER = "polygraphy_class"  # polygraphy.constants.TYPE_MARKER
REFERENCE_RUNNER = "panoptic-deploy-torch-fp32"


class PolygraphyFormatError(PanopticDeployError):
    """An array or file cannot be written or read in Polygraphy's JSON format."""


def encode_array(array: npt.ArrayLike) -> dict[str, str]:
    """One array as Polygraphy encodes ``np.ndarray``: the ``.npy`` bytes (no pickle), base64."""
    a = np.asarray(array)
    if a.dtype == object:
        raise PolygraphyFormatError("Polygraphy JSON cannot hold object arrays")
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode("ascii"), TYPE_MARKER: "ndarray"}


def decode_array(data: Mapping[str, Any]) -> npt.NDArray[Any]:
    """Inverse of :func:`encode_array`."""
    if data.get(TYPE_MARKER) != "ndarray" or not isinstance(data.get("array"), str):
        raise PolygraphyFormatError(f"not a Polygraphy ndarray: keys {sorted(data)}")
    raw = base64.b64decode(data["array"].encode("ascii"), validate=True)
    return np.asarray(np.load(io.BytesIO(raw), allow_pickle=False))


def _feed(arrays: Mapping[str, npt.ArrayLike]) -> dict[str, dict[str, str]]:
    return {str(name): encode_array(value) for name, value in arrays.items()}


def polygraphy_inputs(feeds: Sequence[Mapping[str, npt.ArrayLike]]) -> list[dict[str, Any]]:
    """The ``--load-inputs`` document: one feed dict per iteration."""
    return [_feed(feed) for feed in feeds]


def polygraphy_outputs(
    outputs: Sequence[Mapping[str, npt.ArrayLike]],
    runner_name: str = REFERENCE_RUNNER,
    runtimes: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """The ``--load-outputs`` document: a ``RunResults`` with one runner and one IterationResult per
    iteration (``runtimes`` in seconds, or null)."""
    times = list(runtimes) if runtimes is not None else [None] * len(outputs)
    if len(times) != len(outputs):
        raise PolygraphyFormatError(f"{len(outputs)} iterations but {len(times)} runtimes")
    iterations = [
        {
            "outputs": {
                str(name): {"values": encode_array(value), TYPE_MARKER: "LazyNumpyArray"}
                for name, value in iteration.items()
            },
            "runtime": runtime,
            "runner_name": runner_name,
            TYPE_MARKER: "IterationResult",
        }
        for iteration, runtime in zip(outputs, times, strict=True)
    ]
    return {"lst": [[runner_name, iterations]], TYPE_MARKER: "RunResults"}


def write_polygraphy_inputs(path: PathLike, feeds: Sequence[Mapping[str, npt.ArrayLike]]) -> None:
    """Write ``feeds`` (input name -> array, per iteration) for ``polygraphy run --load-inputs``."""
    if not feeds:
        raise PolygraphyFormatError(f"{path}: no inputs to write")
    write_text_atomic(path, json.dumps(polygraphy_inputs(feeds)) + "\n")


def write_polygraphy_outputs(
    path: PathLike,
    outputs: Sequence[Mapping[str, npt.ArrayLike]],
    runner_name: str = REFERENCE_RUNNER,
    runtimes: Sequence[float | None] | None = None,
) -> None:
    """Write ``outputs`` (output name -> array, per iteration) for ``polygraphy run --load-outputs``."""
    if not outputs:
        raise PolygraphyFormatError(f"{path}: no outputs to write")
    write_text_atomic(path, json.dumps(polygraphy_outputs(outputs, runner_name, runtimes)) + "\n")


def read_polygraphy_outputs(path: PathLike) -> dict[str, list[dict[str, npt.NDArray[Any]]]]:
    """Runner name -> per-iteration outputs of a ``RunResults`` file (ours or Polygraphy's
    ``--save-outputs``); :class:`PolygraphyFormatError` naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get(TYPE_MARKER) != "RunResults":
            raise PolygraphyFormatError(f"{path}: not a Polygraphy RunResults file")
        result: dict[str, list[dict[str, npt.NDArray[Any]]]] = {}
        for runner, iterations in data["lst"]:
            result[str(runner)] = [
                {
                    name: decode_array(lazy.get("values", lazy))  # LazyArray wraps; a bare array too
                    for name, lazy in it["outputs"].items()
                }
                for it in iterations
            ]
        return result
    except PolygraphyFormatError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PolygraphyFormatError(f"{path}: not a readable Polygraphy RunResults file ({exc})") from None


def write_reference_for_polygraphy(
    reference: PathLike,
    config: PathLike,
    inputs_out: PathLike,
    outputs_out: PathLike,
    opts: Sequence[str] = (),
    max_images: int | None = None,
) -> int:
    """From the torch FP32 reference (``write_reference``'s .npz): the network input of each image whose raw
    outputs it kept (its fidelity subset; the first ``max_images`` of them, default all), prepared exactly as
    the benchmarks prepare them, to ``inputs_out``, and those recorded network outputs to ``outputs_out``.
    Returns the number of images."""
    from panoptic_deploy.bench.reference import read_reference
    from panoptic_deploy.modeling import INPUT_NAME, OUTPUT_NAMES
    from panoptic_deploy.preprocess import prepare_at_size
    from panoptic_deploy.spec import ModelSpec

    ref = read_reference(reference)
    spec = ModelSpec.of(config, opts)
    spec.check_categories(ref.categories)
    input_params = spec.input_params
    hw = ref.input_shape[2:]
    # The images whose raw outputs the reference kept (its fidelity subset, evaluation.fidelity_images).
    kept = [(im, im.outputs) for im in ref.images if im.outputs is not None][:max_images]
    prepared = [prepare_at_size(im.path, input_params, hw, ref.buckets) for im, _ in kept]
    feeds = [{INPUT_NAME: p.tensor.numpy()} for p in prepared]
    outputs = [{name: raw[name] for name in OUTPUT_NAMES} for _, raw in kept]
    write_polygraphy_inputs(inputs_out, feeds)
    write_polygraphy_outputs(outputs_out, outputs)
    return len(feeds)
