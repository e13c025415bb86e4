"""The INT8 sensitivity search: exclude the nodes that read :func:`int8_debug.debug_int8`'s worst tensors
from INT8, one tensor at a time, until a loss (PQ points lost against the torch FP32 reference, or output
noise) is within budget; :meth:`SearchResult.config_snippet` prints the ``int8.exclude_nodes`` to paste.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from panoptic_deploy.fileio import PathLike
from panoptic_deploy.int8_debug import Batch, Int8Debug, _session

# A loss of an INT8 model file: lower is better, 0 = identical to FP32 (e.g. PQ points dropped).
Evaluator = Callable[[Path], float]


# ---------------------------------------------------------------------------------------------------------
# Losses to search against


def output_noise_evaluator(
    fp32_onnx: PathLike, batches: Sequence[Batch], threads: int | None = None
) -> Evaluator:
    """Loss = the worst float output's noise power in percent of its signal (100 · ‖x − y‖² / ‖x‖²) of a
    model against ``fp32_onnx`` on ``batches``: a model-agnostic budget for tests and for graphs without a
    panoptic head."""
    fp32_session = _session(Path(fp32_onnx), threads)
    names = [o.name for o in fp32_session.get_outputs() if o.type in ("tensor(float)", "tensor(float16)")]
    all_names = [o.name for o in fp32_session.get_outputs()]
    refs = [dict(zip(all_names, fp32_session.run(None, dict(b)), strict=True)) for b in batches]

    def evaluate(model: Path) -> float:
        session = _session(model, threads)
        out_names = [o.name for o in session.get_outputs()]
        worst = 0.0
        sums = {name: [0.0, 0.0] for name in names}
        for batch, ref in zip(batches, refs, strict=True):
            got = dict(zip(out_names, session.run(None, dict(batch)), strict=True))
            for name in names:
                x = np.asarray(ref[name], np.float64)
                y = np.asarray(got[name], np.float64)
                sums[name][0] += float(np.sum(x * x))
                sums[name][1] += float(np.sum((x - y) ** 2))
        for signal, noise in sums.values():
            worst = max(worst, 100.0 * noise / signal if signal > 0 else 0.0)
        return worst

    return evaluate


def panoptic_fidelity_evaluator(
    reference: PathLike, config: PathLike, opts: Sequence[str] = (), threads: int | None = None
) -> Evaluator:
    """Loss = PQ points lost against the torch FP32 reference (``write_reference``'s .npz): 100 · (1 −
    PQ of the model's panoptic output with the reference output as ground truth), on the reference's images,
    with the same pre- and post-processing as the benchmarks. The INT8 gate's fidelity measure."""
    from panoptic_deploy.bench.reference import read_reference
    from panoptic_deploy.compare import panoptic_agreement, panoptic_pair
    from panoptic_deploy.modeling import INPUT_NAME
    from panoptic_deploy.postprocess import postprocess
    from panoptic_deploy.predict import segments_info
    from panoptic_deploy.preprocess import prepare_at_size
    from panoptic_deploy.spec import ModelSpec

    ref = read_reference(reference)
    spec = ModelSpec.of(config, opts)
    spec.check_categories(ref.categories)
    input_params, inference = spec.input_params, spec.inference_params
    hw = ref.input_shape[2:]
    prepared = [prepare_at_size(image.path, input_params, hw, ref.buckets) for image in ref.images]
    refs = [image.panoptic.pair(ref.categories) for image in ref.images]
    names = [image.name for image in ref.images]

    def evaluate(model: Path) -> float:
        session = _session(model, threads)
        out_names = [o.name for o in session.get_outputs()]
        tests = []
        for prep in prepared:
            outputs = dict(zip(out_names, session.run(None, {INPUT_NAME: prep.tensor.numpy()}), strict=True))
            result = postprocess(outputs, prep.image_size, prep.orig_size, inference)
            segments = segments_info(result, ref.categories)
            tests.append(panoptic_pair(result.panoptic_seg, segments, ref.categories))
        return 100.0 * (1.0 - panoptic_agreement(tests, refs, names, ref.categories).pq)

    return evaluate


# ---------------------------------------------------------------------------------------------------------
# Sensitivity search


@dataclass(frozen=True)
class SearchStep:
    """One try: exclude ``nodes`` (the consumers of ``tensor``) on top of the exclusions kept so far."""

    tensor: str
    nodes: tuple[str, ...]
    modules: tuple[str, ...]
    loss: float
    kept: bool  # the loss dropped, so the exclusion stays


@dataclass(frozen=True)
class SearchResult:
    """What :func:`sensitivity_search` tried and the exclusions it settled on."""

    budget: float
    initial_loss: float
    final_loss: float
    passed: bool  # final_loss <= budget
    exclude_nodes: tuple[str, ...]  # regexes (escaped node names) to add to int8.exclude_nodes
    base_exclude_nodes: tuple[str, ...]  # the config's own int8.exclude_nodes the search started from
    steps: tuple[SearchStep, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    def config_snippet(self) -> str:
        """The ``int8.exclude_nodes`` to paste into the config (the config's own entries first)."""
        entries = [*self.base_exclude_nodes, *self.exclude_nodes]
        if not entries:
            return "int8:\n  exclude_nodes: []\n"
        # JSON strings are YAML double-quoted scalars: the regex backslashes survive as written.
        return "int8:\n  exclude_nodes:\n" + "".join(f"    - {json.dumps(e)}\n" for e in entries)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "initial_loss": self.initial_loss,
            "final_loss": self.final_loss,
            "passed": self.passed,
            "exclude_nodes": list(self.exclude_nodes),
            "base_exclude_nodes": list(self.base_exclude_nodes),
            "steps": [
                {
                    "tensor": s.tensor,
                    "nodes": list(s.nodes),
                    "modules": list(s.modules),
                    "loss": s.loss,
                    "kept": s.kept,
                }
                for s in self.steps
            ],
            "seconds": self.seconds,
            "config_snippet": self.config_snippet(),
        }


def sensitivity_search(
    fp32_onnx: PathLike,
    cache: PathLike,
    debug: Int8Debug,
    evaluate: Evaluator,
    budget: float,
    *,
    max_nodes: int = 8,
    max_steps: int | None = None,
    high_precision: str = "fp32",
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    initial_loss: float | None = None,
    workdir: PathLike | None = None,
) -> SearchResult:
    """Exclude the consumers of ``debug``'s worst tensors (lowest local SQNR first) from INT8, one tensor
    at a time, until ``evaluate`` (a loss of an INT8 model file) is within ``budget``, ``max_nodes`` nodes are
    excluded, or ``max_steps`` tensors (default ``2 · max_nodes``) were tried. An exclusion is kept only when
    the loss drops. Each step re-quantizes ``fp32_onnx`` with :func:`precision.quantize_int8` (the config's
    ``exclude_op_types`` / ``exclude_nodes`` plus the search's), in ``high_precision`` (``fp32``: the CPU twin
    the evaluators run). ``initial_loss`` is the loss of the INT8 model as configured (measured if None)."""
    import onnx

    from panoptic_deploy.precision import quantize_int8

    started = time.perf_counter()
    fp32_nodes = {n.name for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node}
    max_steps = 2 * max_nodes if max_steps is None else max_steps
    already = [re.compile(p) for p in exclude_nodes]  # the config's exclusions: nothing to try there
    with tempfile.TemporaryDirectory(prefix="int8_search_", dir=workdir) as tmp:
        counter = iter(range(10**9))

        def loss_with(extra: Sequence[str]) -> float:
            out = Path(tmp) / f"step{next(counter)}.onnx"
            quantize_int8(
                fp32_onnx,
                cache,
                out,
                high_precision,
                exclude_op_types=exclude_op_types,
                exclude_nodes=[*exclude_nodes, *(re.escape(n) for n in extra)],
            )
            try:
                return evaluate(out)
            finally:
                out.unlink(missing_ok=True)

        current = loss_with(()) if initial_loss is None else initial_loss
        first = current
        kept: list[str] = []
        steps: list[SearchStep] = []
        for t in debug.tensors:
            if current <= budget or len(kept) >= max_nodes or len(steps) >= max_steps:
                break
            # Only nodes of the FP32 model can be excluded (ModelOpt's own Casts are not), once each.
            nodes = tuple(
                c
                for c in t.consumers
                if c in fp32_nodes and c not in kept and not any(p.fullmatch(c) for p in already)
            )
            if not nodes or len(kept) + len(nodes) > max_nodes:
                continue
            loss = loss_with([*kept, *nodes])
            better = loss < current
            steps.append(SearchStep(t.tensor, nodes, t.modules, loss, better))
            if better:
                kept.extend(nodes)
                current = loss
    return SearchResult(
        budget=budget,
        initial_loss=first,
        final_loss=current,
        passed=current <= budget,
        exclude_nodes=tuple(re.escape(n) for n in kept),
        base_exclude_nodes=tuple(exclude_nodes),
        steps=tuple(steps),
        seconds=round(time.perf_counter() - started, 2),
    )
