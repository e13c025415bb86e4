"""``panoptic-deploy predict`` against the OFFICIAL PanopticFCN output (independent of our Predictor).

The CLI runs the nodeform config at its own test size with the synthetic weights of the parity fixtures
(seed 1), so its files must show what the official code produced for that photo
(tests/fixtures/reference/nodeform). The PNG is decoded here with Pillow alone (id = R + 256 G + 65536 B).
Pixels are compared by category rather than by segment id: two things of near-equal score may take each
other's ids on another CPU (tests/test_model_parity.py says why); the category under each pixel does not move.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from panoptic_deploy.cli import main
from panoptic_deploy.weights import write_synthetic_checkpoint

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "nodeform"
PHOTO = ROOT / "tests" / "fixtures" / "images" / "coffee.png"


def _category_map(ids: np.ndarray, segments: list[dict[str, object]]) -> np.ndarray:
    """H×W (isthing, category_id) code per pixel: 0 void, 1000 + thing category, 2000 + stuff category."""
    out = np.zeros(ids.shape, np.int64)
    for s in segments:
        out[ids == s["id"]] = (1000 if s["isthing"] else 2000) + int(s["category_id"])
    return out


def test_predict_files_match_the_official_output(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    write_synthetic_checkpoint(CONFIG, 1, weights)
    out = tmp_path / "out"
    rc = main(["predict", "--config", str(CONFIG), "--weights", str(weights), "--no-progress",
               "--output", str(out), str(PHOTO)])  # fmt: skip
    assert rc == 0
    with Image.open(out / "coffee.png") as png:
        assert png.mode == "RGB"
        rgb = np.asarray(png, dtype=np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    doc = json.loads((out / "coffee.json").read_text(encoding="utf-8"))
    official = json.loads((REFERENCE / "coffee.segments.json").read_text(encoding="utf-8"))["segments_info"]
    official_ids = np.load(REFERENCE / "coffee.npz")["panoptic_seg"]
    with Image.open(PHOTO) as photo:
        assert ids.shape == official_ids.shape == (photo.height, photo.width) == (doc["height"], doc["width"])
    ours = doc["segments_info"]
    kinds = Counter((s["category_id"], s["isthing"]) for s in ours)
    assert kinds == Counter((s["category_id"], s["isthing"]) for s in official)
    # Same tolerance as the parity test's id maps (the official 1-vs-2-thread spread is 13 px per image).
    agreement = np.mean(_category_map(ids, ours) == _category_map(official_ids, official))
    assert agreement >= 0.999, agreement
    for s in ours:
        assert s["area"] == int((ids == s["id"]).sum())
