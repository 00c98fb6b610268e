import numpy as np
import pytest
import torch
from PIL import Image

from conftest import needs_shared, SHARED
from lesrcnn.resize import contributions, crop_to_multiple, imresize


@needs_shared
def test_reproduces_every_benchmark_lr_image_bit_exactly():
    pairs = sorted(SHARED.glob("data/benchmarks/*/image_SRF_*/*_HR.png"))
    assert len(pairs) >= 300
    bad = []
    for hr_path in pairs:
        s = int(hr_path.parent.name[-1])
        hr = np.asarray(Image.open(hr_path).convert("RGB"))
        lr = np.asarray(Image.open(str(hr_path).replace("_HR.", "_LR.")).convert("RGB"))
        mine = imresize(crop_to_multiple(hr, s), 1 / s)
        if mine.shape != lr.shape or not np.array_equal(mine, lr):
            bad.append(hr_path.name)
    assert not bad, f"{len(bad)} of {len(pairs)} differ, e.g. {bad[:3]}"


def test_weights_sum_to_one_and_indices_are_clamped():
    idx, w = contributions(10, 5, 0.5)
    assert np.allclose(w.sum(1), 1)
    assert idx.min() == 0 and idx.max() == 9


def test_constant_image_stays_constant_and_types_are_kept():
    a = np.full((12, 18, 3), 77, np.uint8)
    for s in (1 / 2, 1 / 3, 1 / 4, 2, 3):
        out = imresize(a, s)
        assert out.dtype == np.uint8 and (out == 77).all()
    assert imresize(a, 1 / 3).shape == (4, 6, 3)
    b = np.full((8, 8), 40000, np.uint16)
    assert imresize(b, 0.5).dtype == np.uint16 and (imresize(b, 0.5) == 40000).all()
    f = np.random.default_rng(0).random((9, 9)).astype(np.float32)
    assert imresize(f, 2).dtype == np.float32


def test_torch_input_gives_the_same_as_numpy():
    a = np.random.default_rng(1).integers(0, 256, (30, 24, 3), dtype=np.uint8)
    t = imresize(torch.from_numpy(a), 1 / 3)
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), imresize(a, 1 / 3))


def test_rounds_half_away_from_zero_like_matlab():
    # 2x1 -> 1x1 average of 0 and 1 is exactly 0.5: MATLAB gives 1, numpy's round-half-even 0
    a = np.array([[0, 1], [0, 1]], np.uint8)
    assert imresize(a, 0.5)[0, 0] == 1


def test_fast_enough_for_training_sets():
    import time
    a = np.random.default_rng(0).integers(0, 256, (1020, 2040, 3), dtype=np.uint8)
    t = time.perf_counter()
    imresize(a, 1 / 4)
    assert time.perf_counter() - t < 20  # a DIV2K-sized image in well under a second on a quiet machine
