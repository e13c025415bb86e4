"""INT8 debugging on a small conv net: scopes through simplification, SQNR per Q/DQ pair (checked against
ONNX Runtime's qdq_loss_debug in a fresh process), and the sensitivity search finding a damaged range.

The net (stem conv, two conv+ReLU blocks, 1x1 head) is exported with the dynamo exporter and simplified with
onnxsim, as the pipeline does; its calibration cache is measured on fresh random inputs, then one tensor's
range is cut to 3 %: the debug must rank that tensor worst, name the module reading it, and the search must
exclude exactly that module's node and recover the accuracy.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch

from panoptic_deploy.int8_debug import activation_qdq_pairs, debug_int8, sqnr_db, write_int8_debug
from panoptic_deploy.int8_search import output_noise_evaluator, sensitivity_search
from panoptic_deploy.onnx_scopes import MODEL_SCOPES_KEY, carry_module_scopes, module_scopes
from panoptic_deploy.precision import (
    calibrate,
    load_calibration_cache,
    quantize_int8,
    write_calibration_cache,
)

H, W = 16, 24


class Block(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.body = torch.nn.Sequential(Block(32), Block(32))
        self.head = torch.nn.Conv2d(32, 4, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.relu(self.stem(image))))


def _batches(rng: np.random.Generator, count: int) -> list[dict[str, npt.NDArray[np.float32]]]:
    return [{"image": rng.normal(0.0, 1.0, (1, 3, H, W)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import onnxsim

    folder = tmp_path_factory.mktemp("int8_debug")
    torch.manual_seed(int(np.random.default_rng().integers(1 << 31)))
    net = SmallNet().eval()
    raw = folder / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (torch.randn(1, 3, H, W),), None, dynamo=True, opset_version=18,
            input_names=["image"], output_names=["out"], verbose=False,
        )  # fmt: skip
    assert program is not None
    program.save(str(raw))
    exported = onnx.load(str(raw))
    simplified, _ = onnxsim.simplify(exported, check_n=0)
    carried = carry_module_scopes(exported, simplified)
    sim = folder / "small.sim.onnx"
    onnx.save(simplified, str(sim))

    rng = np.random.default_rng()
    cache = folder / "small.cache"
    calibrate(sim, iter(_batches(rng, 4)), "minmax", cache)
    # Cut the range of the tensor body.1's conv reads (body.0's ReLU output) to 3 %: most values clip.
    conv = next(
        n
        for n in simplified.graph.node
        if n.op_type == "Conv" and "body.1" in module_scopes(simplified)[n.name]
    )
    parsed = load_calibration_cache(cache)
    damaged_amax = dict(parsed.amax)
    damaged_amax[conv.input[0]] *= 0.03
    damaged = folder / "small.damaged.cache"
    write_calibration_cache(damaged, damaged_amax, parsed.header)
    int8 = folder / "small.int8.onnx"
    quantize_int8(sim, damaged, int8, "fp32")
    clean = folder / "small.clean.int8.onnx"
    quantize_int8(sim, cache, clean, "fp32")
    return {
        "raw": raw, "sim": sim, "cache": cache, "damaged": damaged, "int8": int8, "clean": clean,
        "conv": Path(conv.name), "tensor": Path(conv.input[0]), "carried": Path(str(carried)),
    }  # fmt: skip


def test_simplifiers_drop_node_scopes_and_carry_keeps_them(models: dict[str, Path]) -> None:
    import onnxslim

    exported = onnx.load(str(models["raw"]))
    scopes = module_scopes(exported)
    convs = {n.name: scopes[n.name] for n in exported.graph.node if n.op_type == "Conv"}
    assert sorted(convs.values()) == [
        "body.0.conv (Conv2d)",
        "body.1.conv (Conv2d)",
        "head (Conv2d)",
        "stem (Conv2d)",
    ]
    slimmed = onnxslim.slim(onnx.load(str(models["raw"])))
    assert all(len(n.metadata_props) == 0 for n in slimmed.graph.node)  # what the simplifier does
    assert module_scopes(slimmed) == {}
    sim = onnx.load(str(models["sim"]))
    assert all(len(n.metadata_props) == 1 for n in sim.graph.node)  # ours, and nothing else survived
    assert int(str(models["carried"])) == len(sim.graph.node)
    stored = json.loads(next(p.value for p in sim.metadata_props if p.key == MODEL_SCOPES_KEY))
    assert {k: v for k, v in stored.items() if k in convs} == convs
    # ModelOpt keeps node names: the FP32 map names the INT8 model's quantized convs.
    int8 = onnx.load(str(models["int8"]))
    assert {n.name for n in int8.graph.node if n.op_type == "Conv"} == set(convs)


def test_legacy_names_give_the_scope() -> None:
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="/backbone/res2/res2.0/conv1/Conv")
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [], []))
    assert module_scopes(model) == {"/backbone/res2/res2.0/conv1/Conv": "backbone/res2/res2.0/conv1"}


def test_sqnr_matches_the_definition() -> None:
    rng = np.random.default_rng()
    x = rng.normal(size=1000)
    y = x + rng.normal(scale=0.01, size=1000)
    expected = 20.0 * np.log10(np.linalg.norm(x) / np.linalg.norm(x - y))
    assert sqnr_db(float(np.sum(x * x)), float(np.sum((x - y) ** 2))) == pytest.approx(expected, abs=1e-9)
    assert sqnr_db(4.0, 0.0) == pytest.approx(20.0 * np.log10(2.0 / np.finfo(np.float64).eps))


def test_debug_names_the_damaged_tensor_and_module(models: dict[str, Path], tmp_path: Path) -> None:
    debug = debug_int8(models["sim"], models["int8"], _batches(np.random.default_rng(), 3), threads=1)
    pairs = activation_qdq_pairs(onnx.load(str(models["int8"])))
    assert len(debug.tensors) == len(pairs) >= 4  # the input and each conv's input at least
    worst = debug.tensors[0]
    assert worst.tensor == str(models["tensor"])
    assert worst.consumers == (str(models["conv"]),)
    assert worst.modules == ("body.1.conv (Conv2d)",)
    assert worst.clipped_fraction > 0.3  # 3 % of the range: most positive ReLU outputs lie beyond it
    assert worst.local_sqnr_db < 10.0
    for t in debug.tensors[1:]:
        assert t.local_sqnr_db > 25.0, t  # minmax INT8 on the undamaged tensors
        # Fresh inputs, not the calibration's: a few values may pass the minmax range, not more.
        assert t.clipped_fraction < 0.01, t
    # Everything after the damaged pair inherits its loss: the head's input is poorer than its local SQNR.
    head = next(t for t in debug.tensors if t.modules == ("head (Conv2d)",))
    assert head.cumulative_sqnr_db is not None and head.cumulative_sqnr_db < head.local_sqnr_db
    path = tmp_path / "int8_debug" / "small.json"
    write_int8_debug(debug, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["tensors"][0]["tensor"] == worst.tensor and data["inputs"] == 3
    assert debug.worst_lines(1)[2].startswith(f"| `{worst.tensor}` | body.1.conv (Conv2d) |")


def test_sqnr_agrees_with_onnxruntime_qdq_loss_debug(models: dict[str, Path], tmp_path: Path) -> None:
    batches = _batches(np.random.default_rng(), 2)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, *[b["image"] for b in batches])
    ours = debug_int8(models["sim"], models["int8"], batches, threads=1)
    # A fresh process: ModelOpt's quantize (run by the fixture) patches ORT's calibrator classes, which
    # qdq_loss_debug's augmentation uses.
    script = f"""
import json, numpy as np
from onnxruntime.quantization import qdq_loss_debug as d
data = np.load({str(inputs)!r})
feeds = [{{"image": data[k]}} for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
acts = {{}}
for name, path in (("fp32", {str(models["sim"])!r}), ("int8", {str(models["int8"])!r})):
    aug = {str(tmp_path)!r} + "/" + name + ".aug.onnx"
    d.modify_model_output_intermediate_tensors(path, aug)
    acts[name] = d.collect_activations(aug, iter(feeds))
err = d.compute_activation_error(d.create_activation_matching(acts["int8"], acts["fp32"]))
print(json.dumps(err))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    ort = json.loads(done.stdout.strip().splitlines()[-1])
    matched = [t for t in ours.tensors if t.tensor in ort]
    assert len(matched) >= len(ours.tensors) - 1, (sorted(ort), [t.tensor for t in ours.tensors])
    for t in matched:
        assert t.local_sqnr_db == pytest.approx(ort[t.tensor]["qdq_err"], abs=0.01), t.tensor
        assert t.cumulative_sqnr_db == pytest.approx(ort[t.tensor]["xmodel_err"], abs=0.01), t.tensor


def test_search_excludes_the_damaged_node_and_recovers(models: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng()
    debug = debug_int8(models["sim"], models["int8"], _batches(rng, 2), threads=1)
    evaluate = output_noise_evaluator(models["sim"], _batches(rng, 3), threads=1)
    clean_loss = evaluate(models["clean"])
    damaged_loss = evaluate(models["int8"])
    assert damaged_loss > 20 * clean_loss  # the damage is large and measurable
    budget = 0.5 * (clean_loss + damaged_loss) / 10  # far below the damaged loss, above the clean one
    result = sensitivity_search(
        models["sim"], models["damaged"], debug, evaluate, budget, max_nodes=3, initial_loss=damaged_loss,
        workdir=tmp_path,
    )  # fmt: skip
    conv = str(models["conv"])
    assert result.passed and result.exclude_nodes == (re.escape(conv),)
    assert [(s.nodes, s.kept) for s in result.steps] == [((conv,), True)]
    assert result.final_loss <= budget < result.initial_loss == damaged_loss
    assert result.config_snippet() == f'int8:\n  exclude_nodes:\n    - "{re.escape(conv)}"\n'
    assert list(tmp_path.iterdir()) == []  # the step models are removed

    # A budget nothing can reach: the node budget stops it, each kept exclusion lowered the loss.
    hopeless = sensitivity_search(
        models["sim"], models["damaged"], debug, evaluate, -1.0, max_nodes=2, max_steps=2,
        initial_loss=damaged_loss, exclude_nodes=[re.escape(conv)],
    )  # fmt: skip
    assert not hopeless.passed and len(hopeless.steps) <= 2
    assert all(s.nodes[0] != conv for s in hopeless.steps)
    assert hopeless.config_snippet().startswith(f'int8:\n  exclude_nodes:\n    - "{re.escape(conv)}"\n')
