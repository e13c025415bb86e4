"""Host post-processing latency, and the greedy thing merge three ways, on CPU or GPU.

Run from the repository root (any machine; ``--device cuda`` on a GPU one):

    PYTHONPATH=src python benchmarks/bench_postprocess.py --device cpu --threads 2 --repeats 7

Per reference photo (nodeform R50-400-3x-FAST, synthetic weights SEED=1): the network runs once on the
device, then, in interleaved rounds, are timed (wall clock, with a CUDA synchronise on the GPU):
``postprocess`` as shipped and with the previous merge and a plain ``argmax``/``amax`` for the stuff map
swapped in ("postprocess previous"), and on the same thresholded masks the greedy merge as

* ``previous``: the implementation before this benchmark existed (commit 24ac837: one loop step per
  instance, all on the device, no host read in the loop; ~15 kernels per instance), kept here as the baseline;
* ``sequential``: ``postprocess.greedy_things_sequential`` (the CPU path: a host decision per instance);
* ``batched``: ``postprocess.greedy_things_batched`` (the GPU path: one batched overlap pass and one host
  read per accepted instance).

Each figure is the median over rounds (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

from panoptic_deploy import postprocess as pp
from panoptic_deploy.config import load_config
from panoptic_deploy.modeling import build_model
from panoptic_deploy.postprocess import (
    _as_tensors,
    greedy_things_batched,
    greedy_things_sequential,
    postprocess,
    resize_to_original,
)
from panoptic_deploy.preprocess import prepare_image, read_image
from panoptic_deploy.weights import synthetic_state_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
IMAGES = [
    ROOT / "demo" / "images" / "eval" / f"{n}.png" for n in ("astronaut", "chelsea", "coffee", "rocket")
]


def greedy_previous(masks: torch.Tensor, overlap_thresh: float) -> tuple[list[int], torch.Tensor]:
    """The merge loop as shipped before (sync-free, every op on the device for every instance)."""
    owner = torch.zeros(masks.shape[1:], dtype=torch.int64, device=masks.device)
    taken = torch.zeros(masks.shape[1:], dtype=torch.bool, device=masks.device)
    areas = masks.flatten(1).sum(dim=1).to(torch.float64)
    accepted = []
    for index in range(masks.shape[0]):
        mask = masks[index]
        overlap = (mask & taken).sum().to(torch.float64)
        ok = (areas[index] > 0) & ~(overlap / areas[index].clamp(min=1) > overlap_thresh)
        new = mask & ~taken & ok
        owner = torch.where(new, index + 1, owner)
        taken = taken | new
        accepted.append(ok)
    flags = torch.stack(accepted).tolist() if accepted else []
    return [i for i, ok in enumerate(flags) if ok], owner


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = build_model(load_config(CONFIG))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in synthetic_state_dict(shapes, 1).items()})
    model = model.to(device).eval()
    params = model.inference

    cases = {}
    for path in IMAGES:
        prepared = prepare_image(read_image(path, model.input_params.input_format), model.input_params)
        with torch.no_grad():
            outputs = model(prepared.tensor.to(device))
        out = _as_tensors(outputs._asdict())
        valid = out["inst_valid"].bool()
        scores, probs = out["inst_scores"][valid], out["inst_probs"][valid]
        n = int((scores >= params.combine_inst_thresh).sum())
        masks = resize_to_original(probs[:n], prepared.image_size, prepared.orig_size) > params.inst_thres
        reference = greedy_previous(masks, params.overlap_thresh)
        for greedy in (greedy_things_sequential, greedy_things_batched):
            accepted, owner = greedy(masks, params.overlap_thresh)
            assert accepted == reference[0] and torch.equal(owner, reference[1]), (path.name, greedy.__name__)
        cases[path.name] = (outputs, prepared, masks, len(reference[0]))

    def run_postprocess(case: tuple) -> object:
        return postprocess(case[0], case[1].image_size, case[1].orig_size, params)

    def run_postprocess_previous(case: tuple) -> object:
        # The shipped function with the previous merge loop and a plain argmax/amax swapped in.
        with (
            mock.patch.object(pp, "greedy_things_sequential", greedy_previous),
            mock.patch.object(pp, "greedy_things_batched", greedy_previous),
            mock.patch.object(pp, "channel_argmax", lambda m: (m.argmax(dim=0), m.amax(dim=0))),
        ):
            return run_postprocess(case)

    stages: dict[str, Callable[[tuple], object]] = {
        "postprocess previous": run_postprocess_previous,
        "postprocess": run_postprocess,
        "merge previous": lambda c: greedy_previous(c[2], params.overlap_thresh),
        "merge sequential": lambda c: greedy_things_sequential(c[2], params.overlap_thresh),
        "merge batched": lambda c: greedy_things_batched(c[2], params.overlap_thresh),
    }
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in stages} for name in cases}
    for case in cases.values():  # warm-up
        for fn in stages.values():
            fn(case)
    for _ in range(args.repeats):
        for name, case in cases.items():
            for stage, fn in stages.items():
                times[name][stage].append(timed(lambda fn=fn, case=case: fn(case), device))

    rows = []
    for name, case in cases.items():
        row = {"image": name, "instances merged": int(case[2].shape[0]), "accepted": case[3]}
        row.update({stage: statistics.median(v) for stage, v in times[name].items()})
        rows.append(row)
    env = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "python": platform.python_version(),
    }
    print(json.dumps(env))
    header = ["image", "instances merged", "accepted", *stages]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(
            "| "
            + " | ".join(f"{row[h]:.1f}" if isinstance(row[h], float) else str(row[h]) for h in header)
            + " |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"environment": env, "rows": rows}, indent=1) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
