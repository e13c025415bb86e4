"""The inference model made trainable and back: batched head forward, trainable BN, init, folding.

Training spec §6.2: from scratch, the backbone's FrozenBN is replaced by trainable BatchNorm (eps 1e-5, as
FrozenBN) during training; for the saved file every BN goes back into a FrozenBN with its four tensors
copied unchanged, which is exact because both use eps 1e-5 and FrozenBN computes
``(x − mean) / sqrt(var + eps) · weight + bias``. The result is an ordinary detectron2-format state dict
with the inference model's key set (no ``num_batches_tracked``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from panoptic_deploy.modeling import PanopticFCN
from panoptic_deploy.modeling.layers import FrozenBatchNorm2d
from panoptic_deploy.modeling.panoptic_fcn import HEAD_LEVELS
from panoptic_deploy.training.losses import HeadBatch


def forward_heads_batched(model: PanopticFCN, images: torch.Tensor) -> HeadBatch:
    """B×3×H×W -> raw head outputs for all B images (the inference ``forward_heads`` without ``[0]``)."""
    features = model.backbone(images)
    encoded = model.feature_encoder(model.semantic_fpn(features))
    centres, regions, kernels = [], [], []
    for level in HEAD_LEVELS:
        centre, region = model.position_head(features[level])
        centres.append(centre)
        regions.append(region)
        kernels.append(model.kernel_head(features[level]))
    return HeadBatch(encoded, centres, regions, kernels)


def _named_children_recursive(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    for name, child in module.named_children():
        yield module, name, child
        yield from _named_children_recursive(child)


def _copy_norm(src: nn.Module, dst: nn.Module) -> nn.Module:
    """``dst`` with ``src``'s weight, bias, running mean and variance, on ``src``'s device."""
    device = None
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(src, key)
            assert isinstance(value, torch.Tensor), key
            getattr(dst, key).copy_(value)
            device = value.device
    return dst.to(device)


def frozen_bn_to_bn(model: nn.Module) -> int:
    """Replace every FrozenBatchNorm2d by a trainable BatchNorm2d with the same statistics; returns count."""
    count = 0
    for parent, name, child in list(_named_children_recursive(model)):
        if isinstance(child, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(child.num_features, eps=child.eps)
            setattr(parent, name, _copy_norm(child, bn))
            count += 1
    return count


def bn_to_frozen_bn(model: nn.Module) -> int:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d holding its weight, bias, mean and variance."""
    count = 0
    for parent, name, child in list(_named_children_recursive(model)):
        if isinstance(child, nn.BatchNorm2d):
            if child.eps != 1e-5 or not child.affine:
                raise ValueError(f"{name}: only affine BatchNorm2d with eps 1e-5 folds exactly into FrozenBN")
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            setattr(parent, name, _copy_norm(child, frozen))
            count += 1
    return count


def inference_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The detectron2-format state dict of a trainable model: BN tensors under the FrozenBN keys, float32,
    no ``num_batches_tracked`` (the model itself is not changed)."""
    return {
        key: value.detach().to("cpu", torch.float32).clone()
        for key, value in model.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }


def _c2_msra(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _c2_xavier(conv: nn.Conv2d) -> None:
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_for_training(model: PanopticFCN, bias_value: float, seed: int) -> None:
    """Initialise a freshly built model as training spec §6.1 describes (no pretrained backbone).

    ResNet convs: c2 MSRA, BN γ 1 β 0; FPN: c2 Xavier; fuser: c2 MSRA; position tower: Kaiming-uniform
    (ReLU); out_inst/out_sem: N(0, 0.01), bias ``bias_value``; kernel out_conv and the embeds: N(0, 0.01),
    bias 0; kernel tower and encoder keep PyTorch's default init (re-drawn from ``seed``).
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
            elif isinstance(module, nn.GroupNorm | nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in model.backbone.bottom_up.modules():
            if isinstance(module, nn.Conv2d):
                _c2_msra(module)
        for name, module in model.backbone.named_modules():
            if isinstance(module, nn.Conv2d) and not name.startswith("bottom_up"):
                _c2_xavier(module)
        for module in model.semantic_fpn.modules():
            if isinstance(module, nn.Conv2d):
                _c2_msra(module)
        for module in model.position_head.position_head.modules():
            if isinstance(module, nn.Conv2d) and "offset" not in type(module).__name__.lower():
                bound = math.sqrt(6.0 / (module.weight[0].numel()))
                nn.init.uniform_(module.weight, -bound, bound)
        for conv in (model.position_head.out_inst, model.position_head.out_sem):
            assert conv.bias is not None
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, bias_value)
        for conv in (
            model.kernel_head.out_conv,
            model.thing_generator.embed_extractor,
            model.stuff_generator.embed_extractor,
        ):
            assert conv.bias is not None
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
    finally:
        torch.random.set_rng_state(generator_state)
