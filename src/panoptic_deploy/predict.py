"""Eager PyTorch prediction: image files -> COCO panoptic PNG + segments JSON per image."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from panoptic_deploy.categories import coco_id_from_contiguous
from panoptic_deploy.errors import ImageError, PanopticDeployError
from panoptic_deploy.fileio import write_text_atomic
from panoptic_deploy.modeling import PanopticFCN, build_model
from panoptic_deploy.outputs import output_folder, refuse_overwriting_inputs
from panoptic_deploy.panoptic_format import write_panoptic_png
from panoptic_deploy.postprocess import PanopticResult, postprocess
from panoptic_deploy.preprocess import prepare_image, read_image


class Predictor:
    """Pre-processing + network + host post-processing for one image at a time (batch 1, as official)."""

    def __init__(self, model: PanopticFCN, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_files(
        cls,
        config: str | os.PathLike[str],
        weights: str | os.PathLike[str],
        opts: Sequence[str] = (),
        device: str | torch.device = "cpu",
    ) -> Predictor:
        """Build the model of ``config`` and load ``weights`` strictly (:mod:`panoptic_deploy.checkpoint`)."""
        return cls(load_model(config, weights, opts, device), device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> PanopticResult:
        """H×W×3 uint8 in the model's channel order (``INPUT.FORMAT``) -> result at the image's size."""
        prepared = prepare_image(image, self.model.input_params)
        outputs = self.model(prepared.tensor.to(self.device))
        return postprocess(outputs, prepared.image_size, prepared.orig_size, self.model.inference)

    def predict_file(self, path: str | os.PathLike[str]) -> PanopticResult:
        return self(read_image(path, self.model.input_params.input_format))


def load_model(
    config: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    opts: Sequence[str] = (),
    device: str | torch.device = "cpu",
) -> PanopticFCN:
    """Eval-mode model of ``config`` with ``weights`` loaded strictly, on ``device``."""
    from panoptic_deploy.checkpoint import load_weights
    from panoptic_deploy.config import load_config

    model = build_model(load_config(Path(config), opts))
    load_weights(model, weights)
    return model.to(device).eval()


def segments_info(result: PanopticResult) -> list[dict[str, Any]]:
    """``segments_info`` entries: id, category_id (as the network predicts it), coco_category_id, isthing,
    score (things; None for stuff), area, instance_id (things)."""
    return [
        {
            "id": seg.id,
            "category_id": seg.category_id,
            "coco_category_id": coco_id_from_contiguous(seg.category_id, seg.isthing),
            "isthing": seg.isthing,
            "score": seg.score,
            "area": seg.area,
            "instance_id": seg.instance_id,
        }
        for seg in result.segments
    ]


def write_prediction(result: PanopticResult, output_dir: str | os.PathLike[str], name: str) -> None:
    """Write ``NAME.png`` (segment id = R + 256 G + 65536 B) and ``NAME.json`` into ``output_dir``."""
    png, json_path = prediction_paths(output_dir, name)
    write_panoptic_png(png, result.panoptic_seg)
    document = {
        "file_name": f"{name}.png",
        "height": int(result.panoptic_seg.shape[0]),
        "width": int(result.panoptic_seg.shape[1]),
        "segments_info": segments_info(result),
    }
    write_text_atomic(json_path, json.dumps(document, indent=1) + "\n")


def prediction_paths(output_dir: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """The two files :func:`write_prediction` writes for ``name``: ``NAME.png`` and ``NAME.json``."""
    out = Path(output_dir)
    return out / f"{name}.png", out / f"{name}.json"


def _failure(path: str | os.PathLike[str], exc: Exception) -> str:
    """One line naming the image: the package's errors as they are (with the path if they lack it), anything
    else with its type."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, PanopticDeployError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if text.startswith(str(path)) else f"{path}: {text}"


def predict_files(
    config: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    opts: Sequence[str] = (),
    threads: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Predict every image; returns one line per image that failed, naming it (the others are still written).

    Before anything is read or written: :class:`OutputError` if ``output_dir`` is not a folder or an output
    would overwrite an input (an image, the config or the weights); :class:`ImageError` if two images share
    a name. Whatever one image raises (an undecodable or oversized file, an impossible aspect ratio, a bug)
    is caught, reported and the batch goes on; only an interrupt stops it.
    """
    names = [Path(p).stem for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ImageError(f"several input images share the name {duplicates[0]!r}; outputs would collide")
    output_folder(output_dir, "--output")
    refuse_overwriting_inputs(
        [path for name in names for path in prediction_paths(output_dir, name)], [*images, config, weights]
    )
    if threads is not None:
        torch.set_num_threads(threads)
    predictor = Predictor.from_files(config, weights, opts)
    failures: list[str] = []
    for path, name in tqdm(
        list(zip(images, names, strict=True)),
        desc="predict",
        unit="img",
        disable=not progress or len(images) < 2,
    ):
        try:
            result = predictor.predict_file(path)
            write_prediction(result, output_dir, name)
        except Exception as exc:  # one bad image never stops the batch
            failures.append(_failure(path, exc))
    return failures
