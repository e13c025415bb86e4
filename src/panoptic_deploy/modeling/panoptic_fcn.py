"""PanopticFCN (Li et al., CVPR 2021) with an explicit export boundary.

``PanopticFCN.forward`` maps one padded, normalised image to fixed-size tensors (spec §7.2): per-level
fixed top-k thing centres with validity flags, kernel fusion as tensor algebra, stuff classes without
``unique`` and fixed top-N instance masks. The data-dependent rest (panoptic merge, resize to the original
image) is host code in :mod:`panoptic_deploy.postprocess`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from panoptic_deploy.errors import ConfigError
from panoptic_deploy.modeling.fpn import FPN
from panoptic_deploy.modeling.heads import (
    FeatureEncoder,
    KernelGenerator,
    KernelHead,
    PositionHead,
    SemanticFPN,
)
from panoptic_deploy.modeling.resnet import RESNET_STAGE_BLOCKS, ResNet
from panoptic_deploy.vocab import OUTPUT_NAMES

# Hard-coded in the official inference (not in the config): centre smoothing pool size per level p3..p7,
# the instance score floor before the top-N cut and the mask-score denominator guard.
CENTER_POOL_SIZES = (3, 3, 3, 5, 5)
INSTANCE_SCORE_FLOOR = 0.05
MASK_SCORE_EPS = 1e-6
COSINE_EPS = 1e-8
HEAD_LEVELS = ("p3", "p4", "p5", "p6", "p7")
FUSER_LEVELS = ("p2", "p3", "p4", "p5")
LEVEL_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


@dataclass(frozen=True)
class InferenceParams:
    """Inference thresholds, read from the config (spec §1.4, §1.6)."""

    thing_thres: float = 0.2
    stuff_thres: float = 0.1
    top_num: int = 100
    inst_thres: float = 0.4
    similar_thres: float = 0.9
    class_specific: bool = True
    combine_enable: bool = True
    overlap_thresh: float = 0.5
    stuff_area_limit: int = 4096
    combine_inst_thresh: float = 0.2


@dataclass(frozen=True)
class InputParams:
    """Test-time pre-processing (spec §2)."""

    min_size: int = 400
    max_size: int = 666
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_format: str = "BGR"
    size_divisibility: int = 32


class HeadOutputs(NamedTuple):
    """Raw head outputs for batch 1 (what the official post-processing starts from).

    encoded: E, 64×Hf×Wf. centre_logits[l]: 80×h×w, region_logits[l]: 54×h×w, kernels[l]: 256×h×w for
    l over p3..p7.
    """

    encoded: torch.Tensor
    centre_logits: list[torch.Tensor]
    region_logits: list[torch.Tensor]
    kernels: list[torch.Tensor]


class NetworkOutputs(NamedTuple):
    """Fixed-size outputs of the export boundary (T = min(TOP_NUM, Σ_l min(h_l·w_l, TOP_NUM//2)), S = 54).

    inst_probs: T×Hf×Wf mask probabilities at stride 4 of the padded input, sorted by rescored score.
    inst_scores: T rescored scores (−1 where invalid). inst_classes: T contiguous thing ids (int64).
    inst_valid: T flags (candidate passed every threshold). stuff_probs: S×Hf×Wf, stuff_scores: S,
    stuff_present: S flags (class kept on at least one level).
    """

    inst_probs: torch.Tensor
    inst_scores: torch.Tensor
    inst_classes: torch.Tensor
    inst_valid: torch.Tensor
    stuff_probs: torch.Tensor
    stuff_scores: torch.Tensor
    stuff_present: torch.Tensor


# The names live in vocab (torch-free, read by the engines, comparisons and reports); the named tuple must
# list the same outputs in the same order, or every name -> tensor mapping downstream would be shifted.
if NetworkOutputs._fields != OUTPUT_NAMES:
    raise AssertionError(f"NetworkOutputs fields {NetworkOutputs._fields} differ from vocab {OUTPUT_NAMES}")


class PanopticFCN(nn.Module):
    """Backbone (ResNet-FPN) + fuser + position/kernel heads + encoder + generators.

    Input: 1×3×H×W normalised image, H and W multiples of 32. Child names equal the checkpoint keys.
    """

    def __init__(
        self,
        backbone: FPN,
        semantic_fpn: SemanticFPN,
        position_head: PositionHead,
        kernel_head: KernelHead,
        feature_encoder: FeatureEncoder,
        thing_generator: KernelGenerator,
        stuff_generator: KernelGenerator,
        inference: InferenceParams,
        input_params: InputParams,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.semantic_fpn = semantic_fpn
        self.position_head = position_head
        self.kernel_head = kernel_head
        self.feature_encoder = feature_encoder
        self.thing_generator = thing_generator
        self.stuff_generator = stuff_generator
        self.inference = inference
        self.input_params = input_params

    def forward_heads(self, image: torch.Tensor) -> HeadOutputs:
        """Run the convolutional part: 1×3×H×W -> :class:`HeadOutputs` (batch dimension dropped)."""
        features = self.backbone(image)
        encoded = self.feature_encoder(self.semantic_fpn(features))
        centre_logits, region_logits, kernels = [], [], []
        for level in HEAD_LEVELS:
            centre, region = self.position_head(features[level])
            centre_logits.append(centre[0])
            region_logits.append(region[0])
            kernels.append(self.kernel_head(features[level])[0])
        return HeadOutputs(encoded[0], centre_logits, region_logits, kernels)

    def forward(self, image: torch.Tensor) -> NetworkOutputs:
        """1×3×H×W -> :class:`NetworkOutputs`; every shape depends only on H and W."""
        return self.decode(self.forward_heads(image))

    def decode(self, heads: HeadOutputs) -> NetworkOutputs:
        """Fixed-size candidate selection, kernel fusion and mask prediction on the head outputs."""
        encoded = heads.encoded.flatten(1)  # 64 × Hf·Wf
        hf, wf = heads.encoded.shape[-2:]
        inst_probs, inst_scores, inst_classes, inst_valid = self._things(heads, encoded)
        stuff_probs, stuff_scores, stuff_present = self._stuff(heads, encoded)
        return NetworkOutputs(
            inst_probs.reshape(-1, hf, wf),
            inst_scores,
            inst_classes,
            inst_valid,
            stuff_probs.reshape(-1, hf, wf),
            stuff_scores,
            stuff_present,
        )

    def _things(
        self, heads: HeadOutputs, encoded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.inference
        scores, classes, features = [], [], []
        for centre, kernel, pool in zip(heads.centre_logits, heads.kernels, CENTER_POOL_SIZES, strict=True):
            s, c, f = thing_candidates(centre, kernel, pool, p.top_num // 2)
            scores.append(s)
            classes.append(c)
            features.append(f)
        score = torch.cat(scores)
        cls = torch.cat(classes)
        valid = score > p.thing_thres
        # Global re-sort by score; invalid candidates go last (scores are >= 0, so -1 is below all).
        order = torch.sort(torch.where(valid, score, torch.full_like(score, -1.0)), descending=True).indices
        score, cls, valid = score[order], cls[order], valid[order]
        weights = self.thing_generator(torch.cat(features)[order])
        fused, keep = fuse_thing_kernels(weights, cls, valid, p.similar_thres, p.class_specific)
        probs = torch.sigmoid(fused @ encoded)  # K × Hf·Wf
        binary = (probs > p.inst_thres).to(probs.dtype)
        quality = (probs * binary).sum(1) / (binary.sum(1) + MASK_SCORE_EPS)
        rescored = score * quality
        valid = keep & (rescored >= INSTANCE_SCORE_FLOOR)
        ranked = torch.where(valid, rescored, torch.full_like(rescored, -1.0))
        top = torch.topk(ranked, min(p.top_num, ranked.shape[0])).indices
        return probs[top], ranked[top], cls[top], valid[top]

    def _stuff(
        self, heads: HeadOutputs, encoded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_valid: torch.Tensor | None = None
        feature_sum: torch.Tensor | None = None
        score_sum: torch.Tensor | None = None
        for region, kernel in zip(heads.region_logits, heads.kernels, strict=True):
            score, feature, valid = stuff_candidates(region, kernel, self.inference.stuff_thres)
            v = valid.to(score.dtype)
            num_valid = v if num_valid is None else num_valid + v
            feature_sum = feature * v[:, None] if feature_sum is None else feature_sum + feature * v[:, None]
            score_sum = score * v if score_sum is None else score_sum + score * v
        assert num_valid is not None and feature_sum is not None and score_sum is not None
        denominator = num_valid.clamp(min=1.0)
        # The embed is affine and the level weights sum to one, so averaging features before the embed
        # equals the official average of the embedded kernels.
        kernels = self.stuff_generator(feature_sum / denominator[:, None])
        probs = torch.sigmoid(kernels @ encoded)
        return probs, score_sum / denominator, num_valid > 0


def thing_candidates(
    centre_logits: torch.Tensor, kernels: torch.Tensor, pool_size: int, max_per_level: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed top-k centre peaks of one level (spec §5.1 steps 1–4, 6).

    centre_logits C×h×w, kernels 256×h×w -> scores k, classes k (int64), kernel features k×256, with
    k = min(h·w, max_per_level), in descending score order. Thresholding is left to the caller.
    """
    scores, classes, positions = centre_peaks(centre_logits, pool_size, max_per_level)
    features = kernels.flatten(1).t()[positions]
    return scores, classes, features


def centre_peaks(
    centre_logits: torch.Tensor, pool_size: int, max_per_level: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k smoothed centre peaks of one level: scores k, classes k and positions k (int64, row-major
    in h×w), k = min(h·w, max_per_level), in descending score order."""
    h, w = centre_logits.shape[-2:]
    centre = torch.sigmoid(centre_logits)[None]
    smoothed = F.avg_pool2d(centre, pool_size, stride=1, padding=(pool_size - 1) // 2, count_include_pad=True)
    centre = (centre + smoothed) / 2
    peaks = F.max_pool2d(centre, 3, stride=1, padding=1)
    centre = torch.where(peaks == centre, centre, torch.zeros_like(centre))
    k = min(h * w, max_per_level)
    scores, index = torch.topk(centre.flatten(), k)
    classes, positions = split_flat_index(index, h * w)
    return scores, classes, positions


def split_flat_index(index: torch.Tensor, plane_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, position) of flat indices into a C×(h·w) map, in integer arithmetic only.

    ``//`` on int64 exports as an integer Div (plus an integer Mod sign fix), so no FP16 or INT8 conversion
    of the graph can touch it. ``torch.div(..., rounding_mode="floor")`` exports as Cast to float -> Div ->
    Floor, and a converter puts the Floor in FP16, where quotients such as 79.996 round up to 80 (a class
    out of range and a negative position for about 1.4 % of the candidates at h·w = 3952).
    """
    classes = index // plane_size
    return classes, index - classes * plane_size


def fuse_thing_kernels(
    weights: torch.Tensor,
    classes: torch.Tensor,
    valid: torch.Tensor,
    similar_thres: float,
    class_specific: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-ordered kernel fusion (spec §5.3) as fixed-size tensor algebra.

    weights K×64 in descending score order, classes K, valid K -> (fused kernels K×64, keep K). Row i
    survives unless a higher-scored valid row of the same class has cosine >= ``similar_thres`` to it; a
    survivor averages the kernels of the rows it is the first to claim. Rows that do not survive get 0.
    """
    size = weights.shape[0]
    unit = weights / weights.norm(dim=1, keepdim=True).clamp(min=COSINE_EPS)
    similar = (unit @ unit.t()) >= similar_thres
    upper = torch.ones(size, size, dtype=torch.bool, device=weights.device).triu()
    claims = upper & similar & valid[:, None] & valid[None, :]
    if class_specific:
        claims = claims & (classes[:, None] == classes[None, :])
    claims_f = claims.to(weights.dtype)
    # The first claimant of a column takes it: row i is first where no row above it claims the column.
    # The count of claimants above is a strictly-lower-triangular matrix product, not CumSum: older
    # TensorRT ONNX parsers build a loop for CumSum (no CUDA graph capture, slow). The counts are small
    # integers (<= K), exact in FP32, TF32, FP16 and BF16; 0.5 is the threshold between 0 and 1.
    strictly_upper = torch.ones(size, size, dtype=weights.dtype, device=weights.device).triu(1)
    first = (strictly_upper.t() @ claims_f) < 0.5
    claimed_by_higher = (claims_f * strictly_upper).sum(dim=0) > 0.5
    keep = valid & ~claimed_by_higher
    group = (claims & first & keep[:, None]).to(weights.dtype)
    fused = (group @ weights) / group.sum(dim=1, keepdim=True).clamp(min=1.0)
    return fused, keep


def stuff_candidates(
    region_logits: torch.Tensor, kernels: torch.Tensor, stuff_thres: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class stuff scores and pooled kernel features of one level without ``unique`` (spec §7.2).

    region_logits S×h×w, kernels 256×h×w -> score S (mean probability over the class's arg-max pixels),
    feature S×256 (kernel map summed over those pixels / (h·w)), valid S.
    """
    num_classes = region_logits.shape[0]
    probs = torch.sigmoid(region_logits).flatten(1)  # S × h·w
    labels = probs.argmax(dim=0)
    class_ids = torch.arange(num_classes, device=labels.device)
    one_hot = (labels[None, :] == class_ids[:, None]).to(probs.dtype)
    count = one_hot.sum(dim=1)
    score = (one_hot * probs).sum(dim=1) / count.clamp(min=1.0)
    flat_kernels = kernels.flatten(1)
    feature = (one_hot @ flat_kernels.t()) / flat_kernels.shape[1]
    valid = (count > 0) & (score > stuff_thres)
    return score, feature, valid


def _norm_flag(cfg_node: Any, key: str) -> bool:
    norm = cfg_node.NORM
    if norm not in ("", "GN"):
        raise ConfigError(f"{key}.NORM {norm!r} is not supported (PanopticFCN heads use 'GN' or '')")
    return bool(norm == "GN")


def _check_supported(cfg: Any) -> None:
    """ConfigError for a config this re-implementation does not build (one line naming the key)."""
    m = cfg.MODEL
    if m.META_ARCHITECTURE != "PanopticFCN":
        raise ConfigError(f"MODEL.META_ARCHITECTURE is {m.META_ARCHITECTURE!r}, expected 'PanopticFCN'")
    resnets = m.RESNETS
    if resnets.DEPTH not in RESNET_STAGE_BLOCKS:
        raise ConfigError(f"MODEL.RESNETS.DEPTH {resnets.DEPTH} is not supported (50 or 101)")
    if resnets.NORM != "FrozenBN" or not resnets.STRIDE_IN_1X1 or resnets.NUM_GROUPS != 1:
        raise ConfigError("only FrozenBN, STRIDE_IN_1X1 True and NUM_GROUPS 1 ResNets are supported")
    if any(resnets.DEFORM_ON_PER_STAGE) or resnets.RES5_DILATION != 1:
        raise ConfigError("deformable or dilated ResNet stages are not supported")
    if tuple(m.FEATURE_ENCODER.IN_FEATURES) != HEAD_LEVELS:
        raise ConfigError(f"MODEL.FEATURE_ENCODER.IN_FEATURES must be {list(HEAD_LEVELS)}")
    if tuple(m.SEMANTIC_FPN.IN_FEATURES) != FUSER_LEVELS:
        raise ConfigError(f"MODEL.SEMANTIC_FPN.IN_FEATURES must be {list(FUSER_LEVELS)}")
    if m.INFERENCE.SIMILAR_TYPE != "cosine":
        raise ConfigError(
            "MODEL.INFERENCE.SIMILAR_TYPE must be 'cosine' (the official 'L2' branch is broken)"
        )
    if not m.POSITION_HEAD.STUFF.WITH_THING:
        raise ConfigError("MODEL.POSITION_HEAD.STUFF.WITH_THING False is not supported")
    if m.SEMANTIC_FPN.NORM != "GN":
        raise ConfigError("MODEL.SEMANTIC_FPN.NORM must be 'GN'")


def build_model(cfg: Any) -> PanopticFCN:
    """Build :class:`PanopticFCN` from a loaded config (:func:`panoptic_deploy.config.load_config`)."""
    _check_supported(cfg)
    m = cfg.MODEL
    resnets = m.RESNETS
    bottom_up = ResNet(
        RESNET_STAGE_BLOCKS[resnets.DEPTH],
        stem_channels=resnets.STEM_OUT_CHANNELS,
        res2_channels=resnets.RES2_OUT_CHANNELS,
        width_per_group=resnets.WIDTH_PER_GROUP,
    )
    fpn_channels = m.FPN.OUT_CHANNELS
    backbone = FPN(bottom_up, fpn_channels)
    semantic_fpn = SemanticFPN(
        FUSER_LEVELS,
        tuple(LEVEL_STRIDES[name] for name in FUSER_LEVELS),
        fpn_channels,
        m.SEMANTIC_FPN.CONVS_DIM,
        m.SEMANTIC_FPN.COMMON_STRIDE,
    )
    pos = m.POSITION_HEAD
    position_head = PositionHead(
        fpn_channels,
        pos.CONVS_DIM,
        pos.NUM_CONVS,
        pos.THING.NUM_CLASSES,
        pos.STUFF.NUM_CLASSES,
        coord=pos.COORD,
        norm=_norm_flag(pos, "MODEL.POSITION_HEAD"),
        deform=pos.DEFORM,
    )
    ker = m.KERNEL_HEAD
    kernel_head = KernelHead(
        fpn_channels,
        ker.CONVS_DIM,
        ker.NUM_CONVS,
        coord=ker.COORD,
        norm=_norm_flag(ker, "MODEL.KERNEL_HEAD"),
        deform=ker.DEFORM,
    )
    enc = m.FEATURE_ENCODER
    feature_encoder = FeatureEncoder(
        m.SEMANTIC_FPN.CONVS_DIM,
        enc.CONVS_DIM,
        enc.NUM_CONVS,
        coord=enc.COORD,
        norm=_norm_flag(enc, "MODEL.FEATURE_ENCODER"),
        deform=enc.DEFORM,
    )
    model = PanopticFCN(
        backbone,
        semantic_fpn,
        position_head,
        kernel_head,
        feature_encoder,
        KernelGenerator(ker.CONVS_DIM, enc.CONVS_DIM),
        KernelGenerator(ker.CONVS_DIM, enc.CONVS_DIM),
        inference_params_from_config(cfg),
        input_params_from_config(cfg),
    )
    return model.eval()


def inference_params_from_config(cfg: Any) -> InferenceParams:
    """The inference thresholds of a loaded config (no model is built)."""
    m = cfg.MODEL
    return InferenceParams(
        thing_thres=m.POSITION_HEAD.THING.THRES,
        stuff_thres=m.POSITION_HEAD.STUFF.THRES,
        top_num=m.POSITION_HEAD.THING.TOP_NUM,
        inst_thres=m.INFERENCE.INST_THRES,
        similar_thres=m.INFERENCE.SIMILAR_THRES,
        class_specific=m.INFERENCE.CLASS_SPECIFIC,
        combine_enable=m.INFERENCE.COMBINE.ENABLE,
        overlap_thresh=m.INFERENCE.COMBINE.OVERLAP_THRESH,
        stuff_area_limit=m.INFERENCE.COMBINE.STUFF_AREA_LIMIT,
        combine_inst_thresh=m.INFERENCE.COMBINE.INST_THRESH,
    )


def input_params_from_config(cfg: Any) -> InputParams:
    """The test-time pre-processing of a loaded config (no model is built)."""
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise ConfigError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r} is not supported (BGR or RGB)")
    return InputParams(
        min_size=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size=int(cfg.INPUT.MAX_SIZE_TEST),
        pixel_mean=_per_channel(cfg.MODEL.PIXEL_MEAN, "MODEL.PIXEL_MEAN", positive=False),
        pixel_std=_per_channel(cfg.MODEL.PIXEL_STD, "MODEL.PIXEL_STD", positive=True),
        input_format=cfg.INPUT.FORMAT,
        size_divisibility=LEVEL_STRIDES["p5"],
    )


def _per_channel(values: Any, key: str, positive: bool) -> tuple[float, float, float]:
    """3 finite floats from a config list of 3 (or 1, broadcast as detectron2's ``view(-1, 1, 1)`` does);
    ConfigError naming ``key`` otherwise (``positive``: each must be > 0, it divides)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    ok = len(numbers) == len(values) in (1, 3) and all(math.isfinite(v) for v in numbers)
    if not ok or (positive and not all(v > 0 for v in numbers)):
        what = "finite numbers > 0" if positive else "finite numbers"
        raise ConfigError(f"{key} must be 3 {what} (one per channel) or 1 for all, got {list(values)!r}")
    floats = [float(v) for v in numbers] * (3 // len(numbers))
    return floats[0], floats[1], floats[2]
