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
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch

from panoptic_deploy.int8_debug import activation_qdq_pairs, debug_int8, sqnr_db, write_int8_debug
from panoptic_deploy.int8_groups import quantized_nodes, unquantize_nodes
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
    # The top-level forward's own op (the stem's ReLU) is named by its data flow, not "(SmallNet)".
    relu = next(n.name for n in exported.graph.node if n.op_type == "Relu" and "body" not in scopes[n.name])
    assert scopes[relu] == "SmallNet.forward: stem -> out"
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
    evaluate = output_noise_evaluator(models["sim"], _batches(rng, 3), threads=1)
    clean_loss = evaluate(models["clean"])
    damaged_loss = evaluate(models["int8"])
    assert damaged_loss > 20 * clean_loss  # the damage is large and measurable
    budget = 0.5 * (clean_loss + damaged_loss) / 10  # far below the damaged loss, above the clean one
    result = sensitivity_search(
        models["sim"], models["damaged"], models["int8"], evaluate, budget, max_nodes=3,
        initial_loss=damaged_loss, workdir=tmp_path,
    )  # fmt: skip
    conv = str(models["conv"])
    # By effect: "body" (both blocks) helps most of the three top-level modules, body.1 keeps its gain,
    # and its one conv is the culprit; excluded alone, re-quantized with ModelOpt and measured again.
    assert result.passed and result.exclude_nodes == (re.escape(conv),)
    assert [e.group for e in result.exclusions] == [f"body.1.conv / {conv}"]
    tried = [s.group for s in result.steps]
    assert tried[:3] == ["stem", "body", "head"] and "body.1" in tried and "body.0" in tried
    # body.1, its conv and that node are one node set: measured once, that trial is the kept one.
    assert [s.nodes for s in result.steps if s.kept] == [(conv,)]
    losses = {s.group: s.loss for s in result.steps}
    assert losses["body"] <= budget < min(losses["stem"], losses["head"], losses["body.0"])
    assert result.final_loss <= budget < result.initial_loss == damaged_loss
    assert result.evaluations == len(result.steps) <= 8
    assert result.config_snippet() == (
        f'int8:\n  exclude_nodes:\n    # body.1.conv / {conv} (1 node)\n    - "{re.escape(conv)}"\n'
    )
    assert list(tmp_path.iterdir()) == []  # the trial and confirmation models are removed

    # The config's own exclusions come first in the snippet; a budget nothing reaches stops at max_nodes.
    sim = onnx.load(str(models["sim"]))
    scopes = module_scopes(sim)
    head = next(n.name for n in sim.graph.node if scopes.get(n.name) == "head (Conv2d)")
    hopeless = sensitivity_search(
        models["sim"], models["damaged"], models["int8"], evaluate, -1.0, max_nodes=1,
        initial_loss=damaged_loss, exclude_nodes=[re.escape(head)],
    )  # fmt: skip
    assert not hopeless.passed and len(hopeless.exclude_nodes) == 1
    assert hopeless.config_snippet().startswith(f'int8:\n  exclude_nodes:\n    - "{re.escape(head)}"\n')


def test_unquantize_nodes_reads_the_unquantized_tensors(models: dict[str, Path]) -> None:
    int8 = onnx.load(str(models["int8"]))
    conv = str(models["conv"])
    assert conv in quantized_nodes(int8)
    edited = unquantize_nodes(int8, [conv])
    node = next(n for n in edited.graph.node if n.name == conv)
    producers = {o: n.op_type for n in edited.graph.node for o in n.output}
    inits = {i.name for i in edited.graph.initializer}
    # Its activation comes straight from the ReLU, its weight is the FP32 initializer: no Q/DQ left.
    assert producers[node.input[0]] == "Relu" and node.input[1] in inits
    assert conv not in quantized_nodes(edited)
    assert len(activation_qdq_pairs(edited)) == len(activation_qdq_pairs(int8)) - 1
    read = {i for n in edited.graph.node for i in n.input}
    assert all(i.name in read for i in edited.graph.initializer)  # the dropped pairs' scales are gone too
    onnx.checker.check_model(edited)


def test_report_section_names_tensors_modules_and_the_exclusions(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from panoptic_deploy.int8_debug import Int8DebugError
    from panoptic_deploy.int8_job import INT8_DEBUG_SCHEMA, Int8DebugRun, read_int8_debug
    from panoptic_deploy.int8_search import Exclusion, SearchResult
    from panoptic_deploy.jsonfiles import write_checked_json
    from panoptic_deploy.report.int8_section import int8_debug_lines

    debug = debug_int8(models["sim"], models["int8"], _batches(np.random.default_rng(), 2), threads=1)
    conv = str(models["conv"])
    search = SearchResult(
        budget=2.0, initial_loss=7.5, final_loss=1.25, passed=True,
        exclusions=(Exclusion("body.1", (conv,)),), base_exclude_nodes=(), seconds=12.0, evaluations=5,
    )  # fmt: skip
    row = {"row": "small onnxruntime int8", "gate": "max_pq_drop", "status": "FAIL"}
    debugged = tmp_path / "small.json"
    run = Int8DebugRun("small", "auto", "debugged", (row,), replace(debug, search=search))
    write_checked_json(run.to_json(), debugged, INT8_DEBUG_SCHEMA, "INT8 debug result", Int8DebugError)
    assert read_int8_debug(debugged)["debug"]["tensors"][0]["tensor"] == str(models["tensor"])
    passed = tmp_path / "other.json"
    write_checked_json(
        Int8DebugRun("other", "auto", "gate passed", ()).to_json(), passed, INT8_DEBUG_SCHEMA,
        "INT8 debug result", Int8DebugError,
    )  # fmt: skip
    text = "\n".join(int8_debug_lines([debugged, passed], top=2))
    assert text.startswith("## INT8 debugging\n\n### small\n")
    assert "Debugged because: INT8 gate not passed by small onnxruntime int8." in text
    assert f"| `{models['tensor']}` | body.1.conv (Conv2d) | `{conv}` |" in text
    assert text.count("\n| `") == 2  # the two worst tensors
    assert "7.50 -> 1.25 after re-quantizing with its exclusions, which passes the budget of 2" in text
    snippet = f'int8:\n  exclude_nodes:\n    # body.1 (1 node)\n    - "{re.escape(conv)}"'
    assert f"- body.1: 1 node(s)\n\nTo apply it, paste into the config:\n\n```yaml\n{snippet}\n```" in text
    assert "### other\n\nEvery INT8 row passed its gate: not debugged" in text
    assert int8_debug_lines([]) == []
    broken = tmp_path / "broken.json"
    broken.write_text('{"format_version": 1}', encoding="utf-8")
    with pytest.raises(Exception, match=r"broken\.json: invalid INT8 debug result"):
        int8_debug_lines([broken])
