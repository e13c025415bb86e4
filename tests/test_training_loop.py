"""Training on CPU with a tiny config: loss decreases, BN folding, checkpoint round trip, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panoptic_deploy.checkpoint import load_weights
from panoptic_deploy.config import load_config
from panoptic_deploy.dataset import make_dataset
from panoptic_deploy.errors import CheckpointError, PanopticFormatError
from panoptic_deploy.modeling import build_model
from panoptic_deploy.modeling.layers import FrozenBatchNorm2d
from panoptic_deploy.training.data import Collate, ConcatPanoptic, InputSettings, PanopticDataset
from panoptic_deploy.training.losses import LossParams
from panoptic_deploy.training.model import bn_to_frozen_bn, inference_state_dict
from panoptic_deploy.training.targets import TargetParams
from panoptic_deploy.training.train import (
    LAST_CHECKPOINT,
    SolverParams,
    TrainOptions,
    build_training_model,
    lr_at,
    parameter_groups,
    train,
    train_step,
)

TINY = Path(__file__).parent / "fixtures" / "training" / "tiny.yaml"
SEED = 20261203


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    make_dataset(SEED, 4, out, size=(128, 128))
    return out


def _batch(scenes: Path) -> tuple[torch.Tensor, object]:
    cfg = load_config(TINY)
    params = TargetParams.from_config(cfg)
    data = PanopticDataset(scenes, InputSettings.from_config(cfg), 6, 5)
    return Collate(params)([data.sample(i, f"k{i}") for i in range(2)])


def test_loss_decreases_on_cpu(scenes: Path) -> None:
    torch.manual_seed(0)
    cfg = load_config(TINY, ["SOLVER.WARMUP_ITERS", "0"])
    model = build_training_model(cfg, seed=1, trainable_bn=True)
    solver = SolverParams.from_config(cfg)
    optimizer = torch.optim.SGD(parameter_groups(model, solver), lr=0.01, momentum=0.9)
    images, targets = _batch(scenes)
    totals = [
        float(train_step(model, optimizer, images, targets, LossParams.from_config(cfg), solver,  # type: ignore[arg-type]
                         torch.device("cpu"))["loss"])
        for _ in range(12)
    ]  # fmt: skip
    print("seed", SEED, "losses", [round(t, 3) for t in totals])
    assert totals[-1] < 0.9 * totals[0]  # measured: 7.31 -> 6.32 in 12 steps


def test_bn_folding_matches_eval_mode(scenes: Path) -> None:
    cfg = load_config(TINY)
    model = build_training_model(cfg, seed=2, trainable_bn=True)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # non-trivial statistics and affine parameters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.normal_(0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.2, generator=generator)
    model.eval()
    x = torch.randn(1, 3, 160, 160, generator=generator)
    with torch.no_grad():
        before = model(x)
    state = inference_state_dict(model)
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert set(state) == set(build_model(cfg).state_dict())  # the inference key set
    assert bn_to_frozen_bn(model) > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after.stuff_probs, before.stuff_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.inst_probs, before.inst_probs, rtol=1e-5, atol=1e-5)


def test_train_fold_save_strict_load_and_resume(scenes: Path, tmp_path: Path) -> None:
    opts = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "2"]
    options = TrainOptions(device="cpu", workers=0, seed=5, progress=False, log_period=1)
    straight = train(TINY, [scenes], tmp_path / "a.pth", tmp_path / "a", opts, options)
    assert straight.finished and straight.iteration == 4
    # Round trip: the written file loads strictly into the config's inference model and equals the
    # trained weights with BN folded into FrozenBN.
    cfg = load_config(TINY, opts)
    model = build_model(cfg)
    load_weights(model, tmp_path / "a.pth")
    last = torch.load(tmp_path / "a" / LAST_CHECKPOINT, weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, last["model"][key].float()), key
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(SEED))
    trained = build_training_model(cfg, seed=0, trainable_bn=True)
    trained.load_state_dict(last["model"])
    with torch.no_grad():
        torch.testing.assert_close(model(x).stuff_probs, trained.eval()(x).stuff_probs, rtol=1e-5, atol=1e-5)

    # Resume: 2 iterations, then 2 more in a separate run, give the same weights and momentum.
    first_half = TrainOptions(
        device="cpu", workers=0, seed=5, progress=False, log_period=1, stop_at_iteration=2
    )
    train(TINY, [scenes], tmp_path / "b.pth", tmp_path / "b", opts, first_half)
    resumed = train(TINY, [scenes], tmp_path / "b.pth", tmp_path / "b", opts, options)
    assert resumed.iteration == 4
    b = torch.load(tmp_path / "b" / LAST_CHECKPOINT, weights_only=True)
    for key, value in last["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    momentum_a = [s["momentum_buffer"] for s in last["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(momentum_a) == len(momentum_b) > 0
    for ma, mb in zip(momentum_a, momentum_b, strict=True):
        torch.testing.assert_close(mb, ma, rtol=1e-5, atol=1e-6)
    # Half-precision output loads too (the loader casts to the model's dtype).
    train(TINY, [scenes], tmp_path / "c.pth", tmp_path / "b", opts,
          TrainOptions(device="cpu", workers=0, seed=5, progress=False, half_output=True))  # fmt: skip
    assert torch.load(tmp_path / "c.pth", weights_only=True)["model"][
        "backbone.fpn_lateral2.weight"
    ].dtype == (torch.float16)
    load_weights(build_model(cfg), tmp_path / "c.pth")


def test_lr_schedule_values() -> None:
    cfg = load_config(TINY, ["SOLVER.MAX_ITER", "270000", "SOLVER.WARMUP_ITERS", "1000"])
    p = SolverParams.from_config(cfg)
    p = SolverParams(**{**p.__dict__, "base_lr": 0.01})
    for i, value in ((0, 1.0e-5), (1, 2.0e-5), (500, 0.0049967), (1000, 0.0099667), (135000, 0.0053589)):
        assert lr_at(i, p) == pytest.approx(value, rel=1e-3)  # the spec rounds to 5 digits
    assert lr_at(269999, p) == pytest.approx(1.29e-7, rel=1e-2)


def test_head_sizes_must_match_the_dataset(scenes: Path) -> None:
    cfg = load_config(TINY)
    with pytest.raises(PanopticFormatError, match="NUM_CLASSES"):
        PanopticDataset(scenes, InputSettings.from_config(cfg), 5, 5)
    ConcatPanoptic([PanopticDataset(scenes, InputSettings.from_config(cfg), 6, 5)])


def test_fine_tuning_starts_from_model_weights(scenes: Path, tmp_path: Path) -> None:
    """``MODEL.WEIGHTS`` (detectron2's fine-tuning key) loads a checkpoint into the training model: the BN
    statistics and every weight start from the file, not from the from-scratch initialisation."""
    cfg = load_config(TINY)
    source = build_model(cfg)
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():  # a distinctive state: nothing the initialisation would draw
        for value in source.state_dict().values():
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    torch.save({"model": source.state_dict()}, tmp_path / "start.pth")
    tuned = build_training_model(
        load_config(TINY, ["MODEL.WEIGHTS", str(tmp_path / "start.pth")]), seed=3, trainable_bn=True
    )
    state = inference_state_dict(tuned)
    assert set(state) == set(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(state[key], value), key
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tuned.modules())  # still trainable BN
    # One training step moves the weights away from the file: it trains, it does not only load.
    out = train(TINY, [scenes], tmp_path / "t.pth", tmp_path / "t",
                ["MODEL.WEIGHTS", str(tmp_path / "start.pth"), "SOLVER.MAX_ITER", "1"],
                TrainOptions(device="cpu", workers=0, seed=5, progress=False))  # fmt: skip
    assert out.finished
    written = torch.load(tmp_path / "t.pth", weights_only=True)["model"]
    moved = [k for k, v in source.state_dict().items() if not torch.equal(written[k], v)]
    assert moved
    # ... by one small warm-up step (learning rate x warm-up factor, gradients clipped), so every
    # convolution stays next to the file's values, far from any from-scratch draw.
    for key, value in source.state_dict().items():
        if value.ndim == 4:
            assert (written[key].float() - value).abs().max() < 0.05, key
    # A checkpoint for another model is the loader's one-line error naming the file.
    torch.save({"model": {"backbone.nothing": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth"):
        build_training_model(
            load_config(TINY, ["MODEL.WEIGHTS", str(tmp_path / "bad.pth")]), seed=3, trainable_bn=True
        )
