"""The INT8 sensitivity search: which modules' quantization costs the accuracy, measured by their effect on
a loss (PQ points lost against the torch FP32 reference, or output noise), excluded until the loss is within
budget; :meth:`SearchResult.config_snippet` prints the ``int8.exclude_nodes`` to paste.

Why by effect and not by :func:`int8_debug.debug_int8`'s local SQNR: on the trained demo with a damaged
calibration (minmax from one scene, 4.84 PQ points lost) the worst local SQNRs (18-26 dB) are the stuff
kernels' per-level averaging in ``PanopticFCN.forward``, and excluding them changes the loss by nothing;
the loss is the backbone's: none of its 65 tensors clips (< 0.06 %) and each loses little (local SQNR
median 36 dB), but the error accumulates over its depth (cumulative SQNR 16-17 dB from res2.2 on), and
running the backbone unquantized takes the loss to 1.77. docs/precision.md, "INT8 debugging and the
sensitivity search".
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from panoptic_deploy.defaults import schema_default
from panoptic_deploy.fileio import PathLike
from panoptic_deploy.int8_debug import Batch, _session
from panoptic_deploy.int8_groups import NodeGroup, children, quantized_groups, unquantize_nodes

# The search's evaluation budget: the config schema's int8.search_evaluations, the one place it is set.
SEARCH_EVALUATIONS: int = schema_default("int8", "search_evaluations")

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
    reference: PathLike,
    config: PathLike,
    opts: Sequence[str] = (),
    threads: int | None = None,
    images: int | None = None,
) -> Evaluator:
    """Loss = PQ points lost against the torch FP32 reference (``write_reference``'s .npz): 100 · (1 −
    PQ of the model's panoptic output with the reference output as ground truth), on the reference's images
    (the first ``images`` of them; None: all), with the same pre- and post-processing as the benchmarks.
    The INT8 gate's fidelity measure."""
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
    chosen = ref.images[:images]
    prepared = [prepare_at_size(image.path, input_params, hw, ref.buckets) for image in chosen]
    refs = [image.panoptic.pair(ref.categories) for image in chosen]
    names = [image.name for image in chosen]

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
    """One try: run ``group``'s quantized nodes unquantized, on top of the exclusions kept so far."""

    group: str  # module path, a top-level op's label, or a node name
    nodes: tuple[str, ...]
    loss: float
    kept: bool  # the group the search settled on in this round


@dataclass(frozen=True)
class Exclusion:
    """One group the search excluded: its name (module) and its nodes."""

    group: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class SearchResult:
    """What :func:`sensitivity_search` tried and the exclusions it settled on."""

    budget: float
    initial_loss: float
    final_loss: float  # of the INT8 model re-quantized with the exclusions (ModelOpt), not of the edit
    passed: bool  # final_loss <= budget
    exclusions: tuple[Exclusion, ...]
    base_exclude_nodes: tuple[str, ...]  # the config's own int8.exclude_nodes the search started from
    steps: tuple[SearchStep, ...] = field(default_factory=tuple)
    seconds: float = 0.0
    evaluations: int = 0

    @property
    def exclude_nodes(self) -> tuple[str, ...]:
        """Regexes (escaped whole node names) to add to ``int8.exclude_nodes``, in the order found."""
        return tuple(re.escape(n) for e in self.exclusions for n in e.nodes)

    def config_snippet(self) -> str:
        """The ``int8.exclude_nodes`` to paste into the config: the config's own entries first, then each
        excluded group under a comment naming its module."""
        if not self.base_exclude_nodes and not self.exclusions:
            return "int8:\n  exclude_nodes: []\n"
        # JSON strings are YAML double-quoted scalars: the regex backslashes survive as written.
        lines = [f"    - {json.dumps(e)}\n" for e in self.base_exclude_nodes]
        for e in self.exclusions:
            lines.append(f"    # {e.group} ({len(e.nodes)} node{'s' if len(e.nodes) > 1 else ''})\n")
            lines.extend(f"    - {json.dumps(re.escape(n))}\n" for n in e.nodes)
        return "int8:\n  exclude_nodes:\n" + "".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "initial_loss": self.initial_loss,
            "final_loss": self.final_loss,
            "passed": self.passed,
            "exclusions": [{"group": e.group, "nodes": list(e.nodes)} for e in self.exclusions],
            "exclude_nodes": list(self.exclude_nodes),
            "base_exclude_nodes": list(self.base_exclude_nodes),
            "steps": [
                {"group": s.group, "nodes": list(s.nodes), "loss": s.loss, "kept": s.kept} for s in self.steps
            ],
            "seconds": self.seconds,
            "evaluations": self.evaluations,
            "config_snippet": self.config_snippet(),
        }


class _Trials:
    """Losses of the INT8 model with node sets unquantized in place (:func:`unquantize_nodes`), cached by
    node set, each try recorded as a :class:`SearchStep`."""

    def __init__(self, int8: Any, evaluate: Evaluator, folder: Path, max_evaluations: int) -> None:
        self.int8, self.evaluate, self.folder, self.left = int8, evaluate, folder, max_evaluations
        self.losses: dict[frozenset[str], float] = {}
        self.steps: list[SearchStep] = []

    def loss(self, nodes: Sequence[str], label: str, tried: Sequence[str]) -> float | None:
        """Loss with ``nodes`` unquantized (``tried``, named ``label``, is what this try adds or takes
        back); None when the evaluation budget is spent."""
        import onnx

        key = frozenset(nodes)
        if key not in self.losses:
            if self.left <= 0:
                return None
            self.left -= 1
            path = self.folder / f"trial{len(self.losses)}.onnx"
            onnx.save(unquantize_nodes(self.int8, key), str(path))
            try:
                self.losses[key] = self.evaluate(path)
            finally:
                path.unlink(missing_ok=True)
            self.steps.append(SearchStep(label, tuple(tried), self.losses[key], False))
        return self.losses[key]

    def best(self, kept: Sequence[str], candidates: Sequence[NodeGroup]) -> tuple[NodeGroup, float] | None:
        """The candidate whose exclusion (on top of ``kept``) gives the lowest loss (ties: fewer nodes)."""
        scored = []
        for group in candidates:
            loss = self.loss([*kept, *group.nodes], group.name, group.nodes)
            if loss is not None:
                scored.append((loss, len(group.nodes), group.name, group))
        if not scored:
            return None
        loss, _, _, group = min(scored)
        return group, loss

    def mark_kept(self, nodes: Sequence[str]) -> None:
        for i in range(len(self.steps) - 1, -1, -1):
            if set(self.steps[i].nodes) == set(nodes):
                self.steps[i] = replace(self.steps[i], kept=True)
                return


def _descend(
    trials: _Trials,
    groups: Sequence[NodeGroup],
    kept: Sequence[str],
    start: tuple[NodeGroup, float],
    current: float,
    room: int,
) -> tuple[NodeGroup, float] | None:
    """From a module that helps, go down to the smallest sub-module (or node) that keeps at least half of
    its gain; forced further down while the module has more nodes than ``room``. None if nothing fits.
    Where no sub-module keeps half, the damage is spread over the module: the module is the answer."""
    group, loss = start
    while True:
        below = [g for g in children(group, groups) if not set(g.nodes) <= set(kept)]
        found = trials.best(kept, below) if below else None
        must = len(group.nodes) > room
        if found is None:
            return None if must else (group, loss)
        child, child_loss = found
        if must or current - child_loss >= 0.5 * (current - loss):
            group, loss = child, child_loss
            continue
        return group, loss


def _prune(
    trials: _Trials, groups: Sequence[NodeGroup], kept: Sequence[str], group: NodeGroup, budget: float
) -> tuple[tuple[str, ...], float | None]:
    """Once excluding ``group`` passes ``budget``: give each of its sub-modules back to INT8 (largest first)
    where the loss stays within budget. Returns the nodes still excluded and their loss (None: unchanged)."""
    nodes = list(group.nodes)
    loss = None
    for child in sorted(children(group, groups), key=lambda g: -len(g.nodes)):
        left = [n for n in nodes if n not in child.nodes]
        if not left or len(left) == len(nodes):
            continue
        trial = trials.loss([*kept, *left], f"{child.name} back to INT8", child.nodes)
        if trial is not None and trial <= budget:
            nodes, loss = left, trial
    return tuple(nodes), loss


def _excludable_groups(fp32_onnx: PathLike, int8: Any) -> list[NodeGroup]:
    """The INT8 model's groups of quantized nodes, named by the FP32 model's module scopes, with only the
    nodes of the FP32 model (``int8.exclude_nodes`` cannot name ModelOpt's own Casts)."""
    import onnx

    from panoptic_deploy.onnx_scopes import module_scopes

    fp32 = onnx.load(str(fp32_onnx))
    names = {n.name for n in fp32.graph.node}
    trimmed = (
        replace(g, nodes=tuple(n for n in g.nodes if n in names))
        for g in quantized_groups(int8, module_scopes(fp32))
    )
    return [g for g in trimmed if g.nodes]


def _rounds(
    trials: _Trials, groups: Sequence[NodeGroup], current: float, budget: float, limit: int
) -> list[Exclusion]:
    """The greedy rounds of :func:`sensitivity_search`: the exclusions, in the order found."""
    kept: list[str] = []
    exclusions: list[Exclusion] = []
    while current > budget and len(kept) < limit:
        tops = [g for g in groups if len(g.parts) == 1 and not set(g.nodes) <= set(kept)]
        found = trials.best(kept, tops)
        if found is not None and found[1] < current:
            found = _descend(trials, groups, kept, found, current, limit - len(kept))
        if found is None or found[1] >= current:
            break
        group, current = found
        nodes = tuple(n for n in group.nodes if n not in kept)
        if current <= budget:
            nodes, pruned = _prune(trials, groups, kept, replace(group, nodes=nodes), budget)
            current = current if pruned is None else pruned
        trials.mark_kept([*kept, *nodes])
        kept.extend(nodes)
        exclusions.append(Exclusion(group.name, nodes))
    return exclusions


def sensitivity_search(
    fp32_onnx: PathLike,
    cache: PathLike,
    int8_onnx: PathLike,
    evaluate: Evaluator,
    budget: float,
    *,
    max_nodes: int | None = None,
    max_evaluations: int = SEARCH_EVALUATIONS,
    confirm: Evaluator | None = None,
    high_precision: str = "fp32",
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    initial_loss: float | None = None,
    workdir: PathLike | None = None,
) -> SearchResult:
    """Find the modules whose quantization costs the loss, by their effect on it, and exclude them.

    ``int8_onnx`` (made from ``fp32_onnx`` and ``cache`` with the config's exclusions, in
    ``high_precision``) is the starting point. Each round measures ``evaluate`` (a loss of an INT8 model
    file, e.g. :func:`panoptic_fidelity_evaluator`) with each top-level module's quantized nodes
    unquantized (:func:`int8_groups.unquantize_nodes`, no re-quantization), takes the module that lowers
    the loss most and descends into its sub-modules, down to the smallest one that keeps at least half of
    that gain (a single node where one node is the culprit; the module itself where the damage is spread
    over it). That group is excluded; if that passes ``budget``, its sub-modules that are not needed go back
    to INT8. Rounds repeat until the loss is within ``budget``, ``max_nodes`` nodes are excluded (default:
    half the quantized nodes; more leaves little of INT8), no group lowers the loss, or ``max_evaluations``
    are spent. The result is then confirmed: ``fp32_onnx`` is re-quantized with
    :func:`precision.quantize_int8` and the found ``int8.exclude_nodes`` and ``confirm`` (default
    ``evaluate``) measures it: :attr:`SearchResult.final_loss`. ``initial_loss`` is ``int8_onnx``'s loss
    under ``confirm`` (measured if None)."""
    import onnx

    from panoptic_deploy.precision import quantize_int8

    started = time.perf_counter()
    confirm = evaluate if confirm is None else confirm
    int8 = onnx.load(str(int8_onnx))
    groups = _excludable_groups(fp32_onnx, int8)
    limit = max_nodes if max_nodes is not None else sum(g.node for g in groups) // 2
    first = confirm(Path(int8_onnx)) if initial_loss is None else initial_loss
    with tempfile.TemporaryDirectory(prefix="int8_search_", dir=workdir) as tmp:
        trials = _Trials(int8, evaluate, Path(tmp), max_evaluations)
        current = evaluate(Path(int8_onnx)) if confirm is not evaluate else first
        exclusions = _rounds(trials, groups, current, budget, limit)
        final = first
        if exclusions:
            out = Path(tmp) / "confirm.onnx"
            found = [re.escape(n) for e in exclusions for n in e.nodes]
            quantize_int8(
                fp32_onnx, cache, out, high_precision, exclude_op_types=exclude_op_types,
                exclude_nodes=[*exclude_nodes, *found],
            )  # fmt: skip
            final = confirm(out)
    return SearchResult(
        budget=budget,
        initial_loss=first,
        final_loss=final,
        passed=final <= budget,
        exclusions=tuple(exclusions),
        base_exclude_nodes=tuple(exclude_nodes),
        steps=tuple(trials.steps),
        seconds=round(time.perf_counter() - started, 2),
        evaluations=len(trials.losses),
    )
