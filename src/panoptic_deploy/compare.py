"""Compare network outputs (a backend against the torch FP32 reference) and their panoptic results.

Used by the export check (ONNX Runtime vs PyTorch on one image) and by every benchmark (any backend vs the
stored torch FP32 reference on the evaluation images).

How outputs are compared (names from :class:`panoptic_deploy.modeling.NetworkOutputs`):

* ``stuff_probs``, ``stuff_scores`` (one row per stuff class) and ``stuff_present``: element by element.
* Instance rows (``inst_*``) are sorted by score, and rows that are not valid carry no information
  (post-processing drops them; their order among equal ``-1`` scores is arbitrary). Two backends may also
  order two valid instances of near-equal score differently. So valid instances are *matched* first: in the
  reference's score order, each reference instance takes the unmatched valid test instance with the same class
  if possible, then the highest mask IoU (masks = probabilities > ``inst_thres``), and a pair needs IoU > 0.5
  (the PQ matching rule). ``inst_probs``/``inst_scores`` errors and ``inst_classes`` mismatches are counted on
  matched pairs; ``inst_valid`` mismatches are the valid instances (of either side) left without a partner.
* Float outputs: absolute error ``|a - b|`` and relative error ``|a - b| / max(|b|, REL_ERROR_FLOOR)``; every
  output is a probability or score in [0, 1] (invalid scores are -1), so values below the floor are treated as
  absolute. Bool/int outputs: the number and fraction of mismatches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from panoptic_deploy.categories import COCO, CategorySet
from panoptic_deploy.panoptic_format import SegmentInfo, segments_from_model_output
from panoptic_deploy.pq import IdMap, pq_between
from panoptic_deploy.vocab import OUTPUT_NAMES

FLOAT_OUTPUTS = ("inst_probs", "inst_scores", "stuff_probs", "stuff_scores")
DISCRETE_OUTPUTS = ("inst_classes", "inst_valid", "stuff_present")
REL_ERROR_FLOOR = 1e-3
MATCH_IOU = 0.5
DEFAULT_INST_THRES = 0.4  # MODEL.INFERENCE.INST_THRES of every released config

Outputs = Mapping[str, NDArray[Any]]


@dataclass(frozen=True)
class InstanceMatch:
    """Valid instances of a test and a reference output paired up (row indices into the T rows)."""

    ref_rows: NDArray[np.int64]
    test_rows: NDArray[np.int64]
    ref_valid: int
    test_valid: int

    @property
    def matched(self) -> int:
        return len(self.ref_rows)

    @property
    def unmatched(self) -> int:
        """Valid instances of either side without a partner."""
        return self.ref_valid + self.test_valid - 2 * self.matched


def as_numpy_outputs(outputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, NDArray[Any]]:
    """NetworkOutputs / dict of torch or numpy -> {name: numpy array} (FP16 maps become float32)."""
    items = outputs._asdict() if hasattr(outputs, "_asdict") else outputs
    if not isinstance(items, Mapping):
        items = dict(zip(OUTPUT_NAMES, items, strict=True))
    result: dict[str, NDArray[Any]] = {}
    for name in OUTPUT_NAMES:
        if name not in items:
            raise KeyError(f"network outputs lack '{name}'")
        value = items[name]
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if value.dtype.is_floating_point:
                value = value.float()
            value = value.numpy()
        array = np.asarray(value)
        if array.dtype in (np.float16, np.float64):
            array = array.astype(np.float32)
        result[name] = array
    return result


def match_instances(test: Outputs, ref: Outputs, inst_thres: float = DEFAULT_INST_THRES) -> InstanceMatch:
    """Pair the valid instances of ``test`` with those of ``ref`` (see the module docstring)."""
    ref_idx = np.flatnonzero(np.asarray(ref["inst_valid"], dtype=bool))
    test_idx = np.flatnonzero(np.asarray(test["inst_valid"], dtype=bool))
    empty = np.zeros(0, np.int64)
    if len(ref_idx) == 0 or len(test_idx) == 0:
        return InstanceMatch(empty, empty, len(ref_idx), len(test_idx))
    ref_masks = (ref["inst_probs"][ref_idx] > inst_thres).reshape(len(ref_idx), -1).astype(np.float32)
    test_masks = (test["inst_probs"][test_idx] > inst_thres).reshape(len(test_idx), -1).astype(np.float32)
    inter = ref_masks @ test_masks.T  # R × T pixel counts (exact in float32 below 2^24 pixels)
    union = ref_masks.sum(1)[:, None] + test_masks.sum(1)[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    same_class = ref["inst_classes"][ref_idx][:, None] == test["inst_classes"][test_idx][None, :]
    # Same class first, then IoU: 2 + IoU beats any IoU alone.
    preference = iou + 2.0 * same_class
    eligible = iou > MATCH_IOU
    order = np.argsort(-np.asarray(ref["inst_scores"])[ref_idx], kind="stable")
    taken = np.zeros(len(test_idx), bool)
    ref_rows: list[int] = []
    test_rows: list[int] = []
    for i in order:
        candidates = eligible[i] & ~taken
        if not candidates.any():
            continue
        j = int(np.argmax(np.where(candidates, preference[i], -1.0)))
        taken[j] = True
        ref_rows.append(int(ref_idx[i]))
        test_rows.append(int(test_idx[j]))
    return InstanceMatch(
        np.asarray(ref_rows, np.int64), np.asarray(test_rows, np.int64), len(ref_idx), len(test_idx)
    )


@dataclass(frozen=True)
class OutputError:
    """Error statistics of one output over one or more images.

    Float outputs fill the ``*_abs``/``*_rel`` fields (None when nothing was compared); bool/int outputs fill
    ``mismatches``. ``compared`` counts elements (float, stuff_present), matched pairs (inst_classes) or valid
    instances of either side (inst_valid).
    """

    name: str
    kind: str  # "float" | "discrete"
    compared: int
    max_abs: float | None = None
    mean_abs: float | None = None
    median_abs: float | None = None
    max_rel: float | None = None
    mean_rel: float | None = None
    median_rel: float | None = None
    mismatches: int = 0

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "compared": self.compared}
        if self.kind == "float":
            for key in ("max_abs", "mean_abs", "median_abs", "max_rel", "mean_rel", "median_rel"):
                data[key] = getattr(self, key)
        else:
            data["mismatches"] = self.mismatches
            data["mismatch_fraction"] = self.mismatch_fraction
        return data


@dataclass
class ErrorAccumulator:
    """Collects per-image differences and reduces them to :class:`OutputError` per output.

    Keeps every absolute difference (float32) until :meth:`result`: about 4 bytes × output size per image,
    fine for the handful of evaluation images a benchmark uses.
    """

    inst_thres: float = DEFAULT_INST_THRES
    _abs: dict[str, list[NDArray[np.float32]]] = field(default_factory=dict)
    _rel: dict[str, list[NDArray[np.float32]]] = field(default_factory=dict)
    _mismatch: dict[str, list[int]] = field(default_factory=dict)
    _compared: dict[str, list[int]] = field(default_factory=dict)
    instances_ref: int = 0
    instances_test: int = 0
    instances_matched: int = 0

    def add(self, test: Outputs, ref: Outputs) -> InstanceMatch:
        """Add one image's outputs (numpy, as from :func:`as_numpy_outputs`); returns its instance match."""
        for name in OUTPUT_NAMES:
            if test[name].shape != ref[name].shape:
                raise ValueError(f"output '{name}' has shape {test[name].shape}, reference {ref[name].shape}")
        match = match_instances(test, ref, self.inst_thres)
        self.instances_ref += match.ref_valid
        self.instances_test += match.test_valid
        self.instances_matched += match.matched
        pairs: dict[str, tuple[NDArray[Any], NDArray[Any]]] = {
            "inst_probs": (test["inst_probs"][match.test_rows], ref["inst_probs"][match.ref_rows]),
            "inst_scores": (test["inst_scores"][match.test_rows], ref["inst_scores"][match.ref_rows]),
            "stuff_probs": (test["stuff_probs"], ref["stuff_probs"]),
            "stuff_scores": (test["stuff_scores"], ref["stuff_scores"]),
        }
        for name, (a, b) in pairs.items():
            a64 = a.astype(np.float64).ravel()
            b64 = b.astype(np.float64).ravel()
            diff = np.abs(a64 - b64)
            self._abs.setdefault(name, []).append(diff.astype(np.float32))
            rel = diff / np.maximum(np.abs(b64), REL_ERROR_FLOOR)
            self._rel.setdefault(name, []).append(rel.astype(np.float32))
        classes_differ = int(
            np.count_nonzero(test["inst_classes"][match.test_rows] != ref["inst_classes"][match.ref_rows])
        )
        self._count("inst_classes", classes_differ, match.matched)
        self._count("inst_valid", match.unmatched, match.ref_valid + match.test_valid - match.matched)
        present_differ = int(np.count_nonzero(test["stuff_present"] != ref["stuff_present"]))
        self._count("stuff_present", present_differ, int(ref["stuff_present"].size))
        return match

    def _count(self, name: str, mismatches: int, compared: int) -> None:
        self._mismatch.setdefault(name, []).append(mismatches)
        self._compared.setdefault(name, []).append(compared)

    def result(self) -> dict[str, OutputError]:
        """Statistics per output, in :data:`OUTPUT_NAMES` order."""
        out: dict[str, OutputError] = {}
        for name in OUTPUT_NAMES:
            if name in FLOAT_OUTPUTS:
                diffs = self._abs.get(name, [])
                abs_all = np.concatenate(diffs) if diffs else np.zeros(0, np.float32)
                rel_all = np.concatenate(self._rel[name]) if diffs else np.zeros(0, np.float32)
                if abs_all.size == 0:
                    out[name] = OutputError(name, "float", 0)
                    continue
                out[name] = OutputError(
                    name,
                    "float",
                    int(abs_all.size),
                    max_abs=float(abs_all.max()),
                    mean_abs=float(abs_all.mean(dtype=np.float64)),
                    median_abs=float(np.median(abs_all)),
                    max_rel=float(rel_all.max()),
                    mean_rel=float(rel_all.mean(dtype=np.float64)),
                    median_rel=float(np.median(rel_all)),
                )
            else:
                out[name] = OutputError(
                    name,
                    "discrete",
                    int(sum(self._compared.get(name, []))),
                    mismatches=int(sum(self._mismatch.get(name, []))),
                )
        return out


def compare_outputs(
    test: Mapping[str, Any] | Sequence[Any], ref: Mapping[str, Any] | Sequence[Any], inst_thres: float
) -> tuple[dict[str, OutputError], InstanceMatch]:
    """Errors of one image's ``test`` outputs against ``ref`` (any of torch / numpy / NetworkOutputs)."""
    acc = ErrorAccumulator(inst_thres)
    match = acc.add(as_numpy_outputs(test), as_numpy_outputs(ref))
    return acc.result(), match


@dataclass(frozen=True)
class Tolerance:
    """Pass criterion of a numerical check: every compared float element satisfies
    ``|a - b| <= atol + rtol * |b|`` and at most ``max_flips`` bool/int mismatches occur in total."""

    atol: float
    rtol: float
    max_flips: int = 0


def tolerance_failures(
    errors: Mapping[str, OutputError], test: Outputs, ref: Outputs, match: InstanceMatch, tol: Tolerance
) -> list[str]:
    """One line per output that violates ``tol`` (empty if the check passes); one image."""
    problems: list[str] = []
    pairs = {
        "inst_probs": (test["inst_probs"][match.test_rows], ref["inst_probs"][match.ref_rows]),
        "inst_scores": (test["inst_scores"][match.test_rows], ref["inst_scores"][match.ref_rows]),
        "stuff_probs": (test["stuff_probs"], ref["stuff_probs"]),
        "stuff_scores": (test["stuff_scores"], ref["stuff_scores"]),
    }
    for name, (a, b) in pairs.items():
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        bad = np.abs(a64 - b64) > tol.atol + tol.rtol * np.abs(b64)
        if bad.any() or not np.isfinite(a64).all():
            err = errors[name]
            problems.append(
                f"{name}: {int(np.count_nonzero(bad))} of {bad.size} values outside atol {tol.atol:g} + "
                f"rtol {tol.rtol:g} (max abs error {err.max_abs:.3g})"
            )
    flips = sum(errors[name].mismatches for name in DISCRETE_OUTPUTS)
    if flips > tol.max_flips:
        detail = ", ".join(
            f"{name} {errors[name].mismatches}/{errors[name].compared}"
            for name in DISCRETE_OUTPUTS
            if errors[name].mismatches
        )
        problems.append(f"{flips} bool/int mismatches (allowed {tol.max_flips}): {detail}")
    return problems


# ---------------------------------------------------------------------------------------------------------
# Panoptic agreement


PanopticPair = tuple[IdMap, Sequence[SegmentInfo]]


def panoptic_pair(
    panoptic_seg: IdMap, segments: Sequence[Mapping[str, Any]], categories: CategorySet | None = None
) -> PanopticPair:
    """(id map, segments with dataset ids of ``categories``, default COCO) for :func:`pq.pq_between` from
    a model result's ``panoptic_seg`` and its ``segments_info`` dicts (contiguous category ids)."""
    return panoptic_seg, segments_from_model_output(segments, categories)


@dataclass(frozen=True)
class PanopticAgreement:
    """PQ/SQ/RQ (0..1) of test panoptic maps against reference maps (the reference plays ground truth), over
    ``n`` categories; ``pixel_agreement``: fraction of pixels with the same (category, thing/stuff) label."""

    pq: float
    sq: float
    rq: float
    n: int
    pixel_agreement: float
    images: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pq": self.pq,
            "sq": self.sq,
            "rq": self.rq,
            "n": self.n,
            "pixel_agreement": self.pixel_agreement,
            "images": self.images,
        }


def _category_map(pair: PanopticPair) -> NDArray[np.int64]:
    """H×W dataset category id per pixel (0 = void)."""
    ids, segments = pair
    lookup = {s.id: s.category_id for s in segments}
    table_ids = np.asarray([0, *lookup], np.int64)
    table_cats = np.asarray([0, *lookup.values()], np.int64)
    order = np.argsort(table_ids)
    pos = np.searchsorted(table_ids[order], np.asarray(ids, np.int64))
    return np.asarray(table_cats[order][pos], np.int64)


def panoptic_agreement(
    tests: Sequence[PanopticPair],
    refs: Sequence[PanopticPair],
    names: Sequence[str] | None = None,
    categories: CategorySet | None = None,
) -> PanopticAgreement:
    """PQ of ``tests`` against ``refs`` (pq.py's in-memory comparison over ``categories``, default COCO)
    plus pixel agreement."""
    cats = COCO if categories is None else categories
    result = pq_between(tests, refs, categories=cats.categories, names=names)
    same = 0
    total = 0
    for test, ref in zip(tests, refs, strict=True):
        same += int(np.count_nonzero(_category_map(test) == _category_map(ref)))
        total += int(np.asarray(ref[0]).size)
    return PanopticAgreement(
        pq=result.all.pq,
        sq=result.all.sq,
        rq=result.all.rq,
        n=result.all.n,
        pixel_agreement=same / total if total else 1.0,
        images=len(refs),
    )
