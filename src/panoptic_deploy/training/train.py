"""The training loop: solver (training spec §5, adapted per §6.2), checkpoints, resume, the folded output.

A run trains ``SOLVER.MAX_ITER`` iterations of ``SOLVER.IMS_PER_BATCH`` images. Every
``SOLVER.CHECKPOINT_PERIOD`` iterations (and when it stops) it writes ``WORK/last.pth`` (model with trainable
BN, optimizer with momentum buffers, iteration) and appends the loss log ``WORK/loss_log.jsonl``. A new run
with the same work folder resumes from ``last.pth``: the data order and augmentation are a pure function of
(seed, position in the stream), so resuming continues the same sequence of batches. ``--max-minutes`` stops
cleanly (checkpoint, output) inside a time budget. At the end of every run the current weights are folded
into FrozenBN and written to ``--output`` as ``{"model": state_dict}`` (optionally float16).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from panoptic_deploy.checkpoint import load_weights
from panoptic_deploy.config import CfgNode, load_config
from panoptic_deploy.errors import CheckpointError, ConfigError
from panoptic_deploy.fileio import atomic_path, write_text_atomic
from panoptic_deploy.modeling import PanopticFCN, build_model
from panoptic_deploy.training.data import Collate, ConcatPanoptic, InputSettings, PanopticDataset
from panoptic_deploy.training.losses import LossParams, panoptic_losses
from panoptic_deploy.training.model import (
    forward_heads_batched,
    frozen_bn_to_bn,
    inference_state_dict,
    init_for_training,
)
from panoptic_deploy.training.targets import BatchTargets, TargetParams

LAST_CHECKPOINT = "last.pth"
LOSS_LOG = "loss_log.jsonl"


@dataclass(frozen=True)
class SolverParams:
    """SOLVER keys (spec §5)."""

    base_lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    weight_decay_norm: float
    weight_decay_bias: float
    max_iter: int
    warmup_iters: int
    warmup_factor: float
    warmup_method: str
    scheduler: str
    poly_power: float
    poly_constant_ending: float
    steps: tuple[int, ...]
    gamma: float
    clip_value: float | None
    ims_per_batch: int
    checkpoint_period: int

    @classmethod
    def from_config(cls, cfg: CfgNode) -> SolverParams:
        s = cfg.SOLVER
        if s.LR_SCHEDULER_NAME not in ("WarmupPolyLR", "WarmupMultiStepLR"):
            raise ConfigError(
                f"SOLVER.LR_SCHEDULER_NAME {s.LR_SCHEDULER_NAME!r}: WarmupPolyLR or WarmupMultiStepLR"
            )
        clip = s.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE != "value":
            raise ConfigError("SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value' (the PanopticFCN setting)")
        return cls(
            base_lr=float(s.BASE_LR),
            momentum=float(s.MOMENTUM),
            nesterov=bool(s.NESTEROV),
            weight_decay=float(s.WEIGHT_DECAY),
            weight_decay_norm=float(s.WEIGHT_DECAY_NORM),
            weight_decay_bias=float(s.WEIGHT_DECAY_BIAS),
            max_iter=int(s.MAX_ITER),
            warmup_iters=int(s.WARMUP_ITERS),
            warmup_factor=float(s.WARMUP_FACTOR),
            warmup_method=str(s.WARMUP_METHOD),
            scheduler=str(s.LR_SCHEDULER_NAME),
            poly_power=float(s.POLY_LR_POWER),
            poly_constant_ending=float(s.POLY_LR_CONSTANT_ENDING),
            steps=tuple(int(v) for v in s.STEPS),
            gamma=float(s.GAMMA),
            clip_value=float(clip.CLIP_VALUE) if clip.ENABLED else None,
            ims_per_batch=int(s.IMS_PER_BATCH),
            checkpoint_period=int(s.CHECKPOINT_PERIOD),
        )


def lr_at(i: int, p: SolverParams) -> float:
    """Learning rate of the 0-based iteration ``i``: detectron2's WarmupPolyLR / WarmupMultiStepLR."""
    warm = 1.0
    if i < p.warmup_iters:
        if p.warmup_method == "linear":
            alpha = i / p.warmup_iters
            warm = p.warmup_factor * (1 - alpha) + alpha
        else:
            warm = p.warmup_factor
    if p.scheduler == "WarmupPolyLR":
        if p.poly_constant_ending > 0 and warm == 1.0:
            decay = (1.0 - i / p.max_iter) ** p.poly_power
            if decay < p.poly_constant_ending:
                return p.base_lr * p.poly_constant_ending
        return float(p.base_lr * warm * max(0.0, 1.0 - i / p.max_iter) ** p.poly_power)
    return p.base_lr * warm * p.gamma ** sum(1 for s in p.steps if s <= i)


def parameter_groups(model: nn.Module, p: SolverParams) -> list[dict[str, Any]]:
    """One group per trainable parameter (spec §5): norm weights/biases get WEIGHT_DECAY_NORM, other
    biases WEIGHT_DECAY_BIAS, everything else WEIGHT_DECAY; frozen parameters are left out."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module in model.modules():
        norm = isinstance(module, nn.GroupNorm | nn.BatchNorm2d | nn.LayerNorm)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if norm:
                decay = p.weight_decay_norm
            elif name == "bias":
                decay = p.weight_decay_bias
            else:
                decay = p.weight_decay
            groups.append({"params": [param], "lr": p.base_lr, "weight_decay": decay})
    return groups


def freeze_backbone(model: PanopticFCN, freeze_at: int) -> None:
    """detectron2's FREEZE_AT: 1 freezes the stem, 2 the stem and res2, and so on."""
    bottom_up = model.backbone.bottom_up
    stages = [bottom_up.stem] + [getattr(bottom_up, name) for name in bottom_up.stage_names]
    for stage in stages[:freeze_at]:
        for param in stage.parameters():
            param.requires_grad_(False)


class StreamSampler(torch.utils.data.Sampler[int]):
    """Positions ``start, start+1, ...`` of the endless, epoch-wise shuffled index stream."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class StreamDataset(torch.utils.data.Dataset[Any]):
    """Stream position -> (epoch permutation entry, augmentation key) of a :class:`PanopticDataset`."""

    def __init__(self, dataset: ConcatPanoptic, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._perms: dict[int, list[int]] = {}

    def index_at(self, position: int) -> int:
        n = len(self.dataset)
        epoch, offset = divmod(position, n)
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(n, generator=generator).tolist()
        return self._perms[epoch][offset]

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, position: int) -> Any:
        # The augmentation draw is keyed by the stream position: each visit of an image differs.
        return self.dataset.sample(self.index_at(position), f"{self.seed}/{position}")


@dataclass
class TrainOptions:
    """What the command line adds to the config."""

    device: str = "auto"
    workers: int = 4
    max_minutes: float | None = None
    seed: int = 0
    half_output: bool = False
    progress: bool = True
    log_period: int = 20
    # Stop at this iteration with the config's schedule unchanged (an interruption, as a resumable run
    # meets one); None = run to SOLVER.MAX_ITER.
    stop_at_iteration: int | None = None
    trainable_bn: bool = True


@dataclass
class TrainResult:
    iteration: int
    finished: bool
    losses: list[dict[str, float]] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_training_model(cfg: CfgNode, seed: int, trainable_bn: bool) -> PanopticFCN:
    """The config's model with trainable BN in the backbone: initialised from scratch (spec §6.1), or, when
    ``MODEL.WEIGHTS`` names a checkpoint (detectron2's fine-tuning key), loaded from it strictly and safely
    (``checkpoint.load_weights``), its FrozenBN statistics becoming the trainable BN's starting values."""
    model = build_model(cfg)
    init_for_training(model, float(cfg.MODEL.POSITION_HEAD.THING.BIAS_VALUE), seed)
    if cfg.MODEL.WEIGHTS:
        load_weights(model, cfg.MODEL.WEIGHTS)
    if trainable_bn:
        frozen_bn_to_bn(model)
    freeze_backbone(model, int(cfg.MODEL.BACKBONE.FREEZE_AT))
    return model.train()


def save_training_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int
) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration}, tmp
        )


def load_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load ``last.pth`` (weights_only: tensors and plain containers) into model and optimizer."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        return int(state["iteration"])
    # Whatever a damaged or foreign file raises (unpickling, a non-dict, other parameter groups): one line.
    except (RuntimeError, KeyError, OSError, EOFError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: cannot resume from it ({type(exc).__name__}: {exc})") from None


def write_output(model: nn.Module, cfg: CfgNode, path: str | os.PathLike[str], half: bool) -> None:
    """Fold BN into FrozenBN and write the detectron2-format checkpoint (checked by building the config's
    inference model and loading the state dict strictly)."""
    state = inference_state_dict(model)
    reference = build_model(cfg)
    reference.load_state_dict(state, strict=True)
    if half:
        state = {k: v.to(torch.float16) for k, v in state.items()}
    with atomic_path(path) as tmp:
        torch.save({"model": state}, tmp)


def train(
    config: str | os.PathLike[str],
    dataset_dirs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    opts: Sequence[str] = (),
    options: TrainOptions | None = None,
) -> TrainResult:
    """Train (or resume) and write the folded checkpoint to ``output``; see the module docstring."""
    o = options or TrainOptions()
    cfg = load_config(Path(config), opts)
    solver = SolverParams.from_config(cfg)
    max_iter = solver.max_iter if o.stop_at_iteration is None else o.stop_at_iteration
    device = _device(o.device)
    torch.manual_seed(o.seed)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)

    model = build_training_model(cfg, o.seed, o.trainable_bn).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    optimizer = torch.optim.SGD(
        parameter_groups(model, solver), lr=solver.base_lr, momentum=solver.momentum, nesterov=solver.nesterov
    )
    start = 0
    last = work / LAST_CHECKPOINT
    if last.is_file():
        start = load_training_state(last, model, optimizer)
        print(f"resumed from {last} at iteration {start}")

    target_params = TargetParams.from_config(cfg)
    loss_params = LossParams.from_config(cfg)
    settings = InputSettings.from_config(cfg)
    dataset = ConcatPanoptic(
        [
            PanopticDataset(d, settings, target_params.num_thing_classes, target_params.num_stuff_classes)
            for d in dataset_dirs
        ]
    )
    batch = solver.ims_per_batch
    loader = torch.utils.data.DataLoader(
        StreamDataset(dataset, o.seed),
        batch_size=batch,
        sampler=StreamSampler(start * batch, max_iter * batch),
        num_workers=o.workers,
        collate_fn=Collate(target_params),
        pin_memory=cuda,
        persistent_workers=False,
        prefetch_factor=4 if o.workers > 0 else None,
    )
    result = TrainResult(start, start >= max_iter)
    deadline = None if o.max_minutes is None else time.monotonic() + 60 * o.max_minutes
    log_path = work / LOSS_LOG
    iteration = start
    bar = tqdm(
        total=max_iter, initial=start, desc="train", unit="it", disable=not o.progress, dynamic_ncols=True
    )
    window_start, window_images = time.monotonic(), 0
    model.train()
    try:
        for images, targets in loader:
            lr = lr_at(iteration, solver)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = train_step(model, optimizer, images, targets, loss_params, solver, device)
            iteration += 1
            window_images += images.shape[0]
            bar.update(1)
            if iteration % o.log_period == 0 or iteration == max_iter:
                values = {k: float(v) for k, v in losses.items()}  # the only host synchronisation
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(f"iteration {iteration}: loss became non-finite: {values}")
                elapsed = time.monotonic() - window_start
                record = {"iteration": iteration, "lr": lr, **values, "images_per_s": window_images / elapsed}
                result.losses.append(record)
                bar.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
                with log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                window_start, window_images = time.monotonic(), 0
            if iteration % solver.checkpoint_period == 0 and iteration < max_iter:
                save_training_state(last, model, optimizer, iteration)
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        bar.close()
    result.iteration = iteration
    result.finished = iteration >= max_iter
    save_training_state(last, model, optimizer, iteration)
    write_output(model, cfg, output, o.half_output)
    write_text_atomic(
        work / "progress.json", json.dumps({"iteration": iteration, "max_iter": max_iter}, indent=1) + "\n"
    )
    return result


def train_step(
    model: PanopticFCN,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: BatchTargets,
    loss_params: LossParams,
    solver: SolverParams,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Forward, losses, backward, value clipping, SGD step (spec §5's iteration order).

    Returns the detached loss tensors (and their sum, ``loss``) without reading them on the host.
    """
    cuda = device.type == "cuda"
    images = images.to(device, non_blocking=True)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = targets.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        heads = forward_heads_batched(model, images)
    losses = panoptic_losses(heads, targets, model.thing_generator, model.stuff_generator, loss_params)
    total = torch.stack(list(losses.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    total.backward()  # type: ignore[no-untyped-call]
    if solver.clip_value is not None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        for grad in grads:
            grad.clamp_(-solver.clip_value, solver.clip_value)
    optimizer.step()
    out = {k: v.detach() for k, v in losses.items()}
    out["loss"] = total.detach()
    return out
