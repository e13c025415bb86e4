"""``panoptic-deploy predict``: COCO panoptic PNG + segments JSON per image, errors per image."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic_deploy.categories import coco_id_from_contiguous
from panoptic_deploy.cli import main
from panoptic_deploy.panoptic_format import read_panoptic_png
from panoptic_deploy.predict import Predictor
from panoptic_deploy.preprocess import read_image
from panoptic_deploy.weights import write_synthetic_checkpoint

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST-nodeform.yaml"
# Small test-time size and a small stuff area limit keep this fast and still give segments of both kinds.
OPTS = [
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "160",
    "MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT",
    "64",
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "w.pth"
    write_synthetic_checkpoint(CONFIG, 1, path, opts=OPTS)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    seed = secrets.randbits(32)
    print(f"images: crop seed {seed}")  # shown with a failing test's captured output
    rng = np.random.default_rng(seed)
    paths = []
    for name in ("coffee", "chelsea"):
        image = Image.open(ROOT / "tests" / "fixtures" / "images" / f"{name}.png")
        # Random crop so that every run sees a fresh input (its seed printed above).
        w, h = image.size
        x, y = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        path = tmp_path / f"{name}.png"
        image.crop((x, y, x + w // 2, y + h // 2)).save(path)
        paths.append(path)
    return paths


def test_predict_writes_png_and_json_that_agree(tmp_path: Path, weights: Path, images: list[Path]) -> None:
    out = tmp_path / "out"
    rc = main(["predict", "--config", str(CONFIG), "--weights", str(weights), "--no-progress",
               "--opts", *OPTS, "--output", str(out), *map(str, images)])  # fmt: skip
    assert rc == 0
    predictor = Predictor.from_files(CONFIG, weights, OPTS)
    for path in images:
        ids = read_panoptic_png(out / f"{path.stem}.png")
        doc = json.loads((out / f"{path.stem}.json").read_text())
        image = read_image(path)
        assert ids.shape == image.shape[:2] == (doc["height"], doc["width"])
        segments = doc["segments_info"]
        assert {s["id"] for s in segments} == set(np.unique(ids).tolist()) - {0}
        assert any(s["isthing"] for s in segments) and any(not s["isthing"] for s in segments)
        for s in segments:
            assert s["area"] == int((ids == s["id"]).sum())
            assert s["coco_category_id"] == coco_id_from_contiguous(s["category_id"], s["isthing"])
            assert (s["score"] is not None) == s["isthing"] == (s["instance_id"] is not None)
        # The files hold exactly what the in-memory predictor returns.
        result = predictor(image)
        np.testing.assert_array_equal(ids, result.panoptic_seg)
        assert [s["category_id"] for s in segments] == [s.category_id for s in result.segments]


def test_unreadable_image_is_reported_and_the_others_still_written(
    tmp_path: Path, weights: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    inputs = [str(images[0]), str(broken), str(images[1])]
    rc = main(["predict", "--config", str(CONFIG), "--weights", str(weights), "--no-progress",
               "--opts", *OPTS, "--output", str(out), *inputs])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0] and "cannot decode image" in err[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{p.stem}{ext}" for p in images for ext in (".json", ".png")
    )


def test_wrong_checkpoint_is_one_line_error_and_writes_nothing(
    tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    dcn_config = ROOT / "configs" / "PanopticFCN-R50-400-3x-FAST.yaml"
    dcn_weights = tmp_path / "dcn.pth"
    write_synthetic_checkpoint(dcn_config, 3, dcn_weights, opts=OPTS)
    out = tmp_path / "out"
    rc = main(["predict", "--config", str(CONFIG), "--weights", str(dcn_weights),
               "--opts", *OPTS, "--output", str(out), str(images[0])])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "deformable" in err[0]
    assert not out.exists()


def test_double_dash_ends_the_overrides(tmp_path: Path, weights: Path, images: list[Path]) -> None:
    out = tmp_path / "out"
    rc = main(["predict", "--config", str(CONFIG), "--weights", str(weights), "--output", str(out),
               "--no-progress", "--opts", *OPTS, "--", str(images[0])])  # fmt: skip
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{images[0].stem}.json", f"{images[0].stem}.png"]
