"""Device pre-processing and the device predictor (issue 12): the resize differs from the host's PIL resize
by at most 2 grey levels, and the predictor's result is exactly the host post-processing of its network
input. The CUDA tests (no host synchronisation, one CUDA graph) skip without a GPU."""

from __future__ import annotations

import copy
import secrets

import numpy as np
import pytest
import torch

from panoptic_deploy.errors import ImageError
from panoptic_deploy.modeling import PanopticFCN
from panoptic_deploy.modeling.panoptic_fcn import InputParams
from panoptic_deploy.postprocess import postprocess
from panoptic_deploy.predict import DevicePredictor, load_model
from panoptic_deploy.preprocess import prepare_image, prepare_on_device
from panoptic_deploy.weights import write_synthetic_checkpoint
from test_postprocess_device import assert_same_result
from test_predict import CONFIG, OPTS

CPU = torch.device("cpu")


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H×W×3 uint8: a smooth gradient plus noise and a hard-edged block (resampling on edges and flats)."""
    yy, xx = np.mgrid[0:h, 0:w]
    phase = xx[..., None] / rng.uniform(3, 20) + yy[..., None] / rng.uniform(3, 20) + np.array([0, 1, 2])
    base = 127 + 100 * np.sin(phase)
    image = base + rng.normal(0, 20, (h, w, 3))
    image[h // 4 : h // 2, w // 3 : w // 2] = rng.integers(0, 256, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(37, 61), (300, 200), (96, 96)])
def test_device_preprocessing_differs_by_resampling_only(size: tuple[int, int]) -> None:
    seed = secrets.randbits(32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    params = InputParams(min_size=96, max_size=160, pixel_std=(57.4, 57.1, 58.4))
    image = smooth_image(rng, *size)
    host = prepare_image(image, params).tensor
    device = prepare_on_device(image, params, CPU)
    assert device.shape == host.shape and device.dtype == torch.float32
    # In grey levels: at most 2 (PIL's fixed-point weights), the zero padding untouched.
    levels = ((device - host) * torch.tensor(params.pixel_std).view(1, 3, 1, 1)).abs()
    assert float(levels.max()) <= 2.0 + 1e-3
    if size == (96, 96):  # no resize: exactly the host input
        assert torch.equal(device, host)
    assert float((levels > 0.5).float().mean()) < 0.2
    assert torch.equal(prepare_on_device(torch.from_numpy(image), params, CPU), device)
    # Into a size bucket (a larger static input): the same values, zero-padded as the host pads.
    bucket = (host.shape[2] + 32, host.shape[3] + 64)
    in_bucket = prepare_on_device(image, params, CPU, bucket)
    assert in_bucket.shape == (1, 3, *bucket)
    assert torch.equal(in_bucket[..., : host.shape[2], : host.shape[3]], device)
    assert not in_bucket[..., host.shape[2] :, :].any() and not in_bucket[..., host.shape[3] :].any()
    assert prepare_image(image, params, [bucket]).tensor.shape == in_bucket.shape
    with pytest.raises(ImageError, match="does not fit the network input 32x"):
        prepare_on_device(image, params, CPU, (32, bucket[1]))


def test_device_preprocessing_refuses_a_non_image() -> None:
    with pytest.raises(ImageError, match=r"expected an H×W×3 uint8 image, got shape \(4, 4\)"):
        prepare_on_device(np.zeros((4, 4), np.uint8), InputParams(), CPU)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> PanopticFCN:
    path = tmp_path_factory.mktemp("weights") / "w.pth"
    write_synthetic_checkpoint(CONFIG, 1, path, opts=OPTS)
    return load_model(CONFIG, path, OPTS)


def test_device_predictor_is_host_postprocessing_of_its_input(model: PanopticFCN) -> None:
    rng = np.random.default_rng(secrets.randbits(32))
    image = smooth_image(rng, 120, 170)
    predictor = DevicePredictor(model, image.shape[:2])
    got = predictor(image)
    with torch.no_grad():
        outputs = model(prepare_on_device(image, model.input_params, CPU))
    want = postprocess(outputs, predictor.image_size, predictor.orig_size, model.inference)
    assert want.segments  # a merge took place
    assert_same_result(got, want)
    with pytest.raises(ImageError, match=r"image of 121x170 \(H x W\): this predictor is built for 120x170"):
        predictor(np.zeros((121, 170, 3), np.uint8))


def test_device_path_runs_without_data_on_the_meta_device(model: PanopticFCN) -> None:
    """The CPU-side proof of "no host synchronisation": meta tensors carry shapes but no values, so any
    data-dependent shape (nonzero, unique, boolean indexing) or value read (item, bool, tolist) raises.
    The whole device path runs there; the host post-processing does not."""
    meta = torch.device("meta")
    predictor = DevicePredictor(copy.deepcopy(model), (50, 70), meta)  # .to(meta) drops the weights
    packed = predictor.run_device(np.zeros((50, 70, 3), np.uint8))
    assert packed.device == meta and packed.dtype == torch.int32
    assert packed.shape == (predictor.layout.length,)
    with torch.no_grad():
        outputs = predictor.model(torch.zeros((1, 3, *predictor.input_hw), device=meta))
    with pytest.raises(NotImplementedError, match="nonzero"):
        postprocess(outputs, predictor.image_size, predictor.orig_size, model.inference)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_path_has_no_host_sync_and_captures_as_one_graph(model: PanopticFCN) -> None:
    image = smooth_image(np.random.default_rng(secrets.randbits(32)), 120, 170)
    predictor = DevicePredictor(model, image.shape[:2], "cuda")
    eager = predictor(image)  # warm-up: cuDNN plans, lazy constants
    pixels = torch.from_numpy(image).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside raises
    try:
        packed = predictor.run_device(pixels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(packed.cpu(), predictor.run_device(pixels).cpu())
    captured = predictor.capture()
    assert_same_result(captured(image), eager)
    other = smooth_image(np.random.default_rng(secrets.randbits(32)), 120, 170)
    assert_same_result(captured(other), predictor(other))  # replays read the new input

