"""The real-photo degradation chain: shapes, determinism, and that each stage really happens."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lesrcnn.degrade import Chain, jpeg_variant, real_lr
from lesrcnn.errors import LesrcnnError
from lesrcnn.resize import imresize


def _photo(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus edges plus texture: something a photo could hold."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([128 + 90 * np.sin(x / 7 + c) * np.cos(y / 11 - c) for c in range(3)], axis=2)
    base[h // 3:2 * h // 3, w // 4:3 * w // 4] += 40
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shape_and_dtype(scale):
    hr = _photo(24 * scale // 2 * 2, 36 * scale // 2 * 2)
    rng = np.random.default_rng(1)
    for _ in range(30):
        lr = real_lr(hr, scale, rng)
        assert lr.dtype == np.uint8 and lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3)
        assert lr.flags["C_CONTIGUOUS"]


def test_deterministic_per_seed_and_varies_across_seeds():
    hr = _photo()
    a = [real_lr(hr, 4, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    outs = {real_lr(hr, 4, np.random.default_rng(s)).tobytes() for s in range(12)}
    assert len(outs) > 6  # the chain is random, not a fixed pipeline


def test_one_rng_stream_is_reproducible():
    hr = _photo()
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):
        assert np.array_equal(real_lr(hr, 2, r1), real_lr(hr, 2, r2))


def test_clean_chain_is_matlab_bicubic():
    """With every random stage off and the bicubic kernel forced, the LR is the evaluation's LR."""
    hr = _photo()
    clean = Chain(blur_prob=0, noise_prob=0, jpeg_prob=0, kernels=(("bicubic", 1.0),))
    assert np.array_equal(real_lr(hr, 3, np.random.default_rng(0), clean), imresize(hr, 1 / 3))


def test_jpeg_stage_is_applied():
    hr = _photo()
    only_jpeg = Chain(blur_prob=0, noise_prob=0, jpeg_prob=1.0, jpeg_quality=(75, 75),
                      kernels=(("bicubic", 1.0),))
    lr = real_lr(hr, 2, np.random.default_rng(0), only_jpeg)
    clean = imresize(hr, 0.5)
    assert not np.array_equal(lr, clean)
    assert np.array_equal(lr, jpeg_variant(clean, 75))


def test_jpeg_variant_matches_a_real_q75_file_with_420_subsampling():
    lr = _photo(48, 64)
    out = jpeg_variant(lr)
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format="JPEG", quality=75, subsampling=2)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        from PIL import JpegImagePlugin

        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
        ref = np.asarray(im.convert("RGB"))
    assert np.array_equal(out, ref)
    err = np.abs(out.astype(int) - lr.astype(int)).mean()
    assert 0.5 < err < 20  # lossy but recognisable
    assert np.abs(jpeg_variant(lr, 95).astype(int) - lr).mean() < err  # quality matters


def test_each_stage_changes_the_image():
    hr = _photo()
    ref = imresize(hr, 0.5)
    for chain in (Chain(blur_prob=1, noise_prob=0, jpeg_prob=0, kernels=(("bicubic", 1.0),)),
                  Chain(blur_prob=0, noise_prob=1, jpeg_prob=0, kernels=(("bicubic", 1.0),)),
                  Chain(blur_prob=0, noise_prob=0, jpeg_prob=0, kernels=(("area", 1.0),)),
                  Chain(blur_prob=0, noise_prob=0, jpeg_prob=0, kernels=(("bilinear", 1.0),)),
                  Chain(blur_prob=0, noise_prob=0, jpeg_prob=0, kernels=(("lanczos", 1.0),))):
        lr = real_lr(hr, 2, np.random.default_rng(0), chain)
        diff = np.abs(lr.astype(int) - ref.astype(int)).mean()
        assert 0.05 < diff < 25, chain


def test_clean_patches_keep_a_share():
    """Most patches are not noised and about a third are not compressed (clean images stay handled)."""
    hr = _photo()
    rng = np.random.default_rng(0)
    clean = Chain(blur_prob=0, noise_prob=0, jpeg_prob=0, kernels=(("bicubic", 1.0),))
    ref = real_lr(hr, 2, np.random.default_rng(0), clean)
    same = sum(np.array_equal(real_lr(hr, 2, rng), ref) for _ in range(300))
    assert 0.05 * 300 < same < 0.5 * 300  # bicubic 55% x no blur 75% x no noise 80% x no JPEG 30% ~ 10%


@pytest.mark.parametrize("shape,scale", [((97, 96, 3), 2), ((96, 95, 3), 3), ((10, 10, 3), 4)])
def test_sizes_not_multiple_of_scale_are_refused(shape, scale):
    with pytest.raises(LesrcnnError, match="not a positive multiple of the scale"):
        real_lr(np.zeros(shape, np.uint8), scale, np.random.default_rng(0))


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32)])
def test_bad_arrays_are_refused(bad):
    with pytest.raises(LesrcnnError, match="HxWx3 uint8"):
        real_lr(bad, 2, np.random.default_rng(0))
    with pytest.raises(LesrcnnError, match="HxWx3 uint8"):
        jpeg_variant(bad)


def test_bad_quality_is_refused():
    with pytest.raises(LesrcnnError, match="quality"):
        jpeg_variant(_photo(16, 16), 0)


def test_tiny_patch_with_blur():
    hr = _photo(8, 8)
    lr = real_lr(hr, 4, np.random.default_rng(0), Chain(blur_prob=1.0))
    assert lr.shape == (2, 2, 3)


def test_real_weights_registered_and_restore_jpeg(shared):
    """`--weights real` loads, records its degradation, and beats the default on a JPEG-q75 input."""
    import torch

    from lesrcnn import weights as W
    from lesrcnn.data import read_rgb
    from lesrcnn.evaluate import super_resolve
    from lesrcnn.metrics import psnr_y, to_uint8

    ck, base = W.load("real"), W.load("lesrcnn-s")
    assert ck.scales == (2, 3, 4) and ck.metadata["provenance"]["recipe"]["degradation"] == "real"
    hr = read_rgb(shared / "data/benchmarks/Set5/image_SRF_2/img_003_SRF_2_HR.png")[64:160, 64:160].copy()
    lr = jpeg_variant(imresize(hr, 0.5), 75)
    with torch.inference_mode():
        out = {k: to_uint8(super_resolve(m.model, lr, 2).permute(1, 2, 0)) for k, m in (("real", ck), ("base", base))}
    assert psnr_y(out["real"], hr, 2) > psnr_y(out["base"], hr, 2) + 0.3
