import math

import numpy as np
import pytest
import torch

from lesrcnn.metrics import psnr_y, rgb_to_y, ssim_gray, ssim_y, to_uint8


def test_truncate_and_round():
    x = torch.tensor([0.5 / 255 * 1.9, 254.6 / 255, 1.2, -0.1])
    assert to_uint8(x, "truncate").tolist() == [0, 254, 255, 0]
    assert to_uint8(x, "round").tolist() == [1, 255, 255, 0]
    with pytest.raises(ValueError):
        to_uint8(x, "floor")


def test_y_channel_is_bt601_rounded():
    px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], np.uint8)
    assert rgb_to_y(px).tolist() == [[235.0, 16.0, 81.0]]


def test_psnr_known_value_and_border():
    a = np.full((20, 20, 3), 100, np.uint8)
    b = a.copy()
    b[0, :] = 200  # only in the border: cropped away
    assert psnr_y(a, b, 2) == math.inf
    c = a.copy()
    c[10, 10] = 110
    d = rgb_to_y(c)[10, 10] - rgb_to_y(a)[10, 10]
    assert psnr_y(c, a, 2) == pytest.approx(10 * math.log10(255**2 / (d * d / 256)))


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 80)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    ref = skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, win_size=11)
    # skimage averages over the full map with 'same' borders cropped by (win-1)/2: the valid region
    assert ssim_gray(a, b) == pytest.approx(ref, abs=1e-9)


def test_ssim_identical_is_one_and_size_mismatch_is_refused():
    a = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    assert ssim_y(a, a, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="size mismatch"):
        psnr_y(a, a[:20], 2)
