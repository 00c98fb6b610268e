"""Finding benchmark and training images (lesrcnn.data): every layout with real files written here."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import natural_image
from lesrcnn.data import find_dataset, hr_images, list_images, load_pair, read_rgb
from lesrcnn.errors import LesrcnnError
from test_io import png_bytes


def _img(path: Path, h: int = 24, w: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(natural_image(h, w, seed)).save(path)
    return path


def _basicsr(root: Path, names=("baby", "bird"), hr="HR", lr="LR_bicubic", suffix="x2") -> Path:
    for i, n in enumerate(names):
        _img(root / hr / f"{n}.png", 24, 24, i)
        _img(root / lr / "X2" / f"{n}{suffix}.png", 12, 12, i)
    return root


def test_selfexsr_layout(tmp_path):
    srf = tmp_path / "Set5" / "image_SRF_2"
    for n in ("img_001_SRF_2", "img_002_SRF_2"):
        _img(srf / f"{n}_HR.png", 24, 24)
        _img(srf / f"{n}_LR.png", 12, 12)
    for root in (tmp_path / "Set5", srf):  # the dataset folder or its image_SRF_2 folder
        ds = find_dataset(root, 2)
        assert (ds.name, ds.layout) == ("Set5", "selfexsr")
        assert [p.name for p in ds.pairs] == ["img_001_SRF_2", "img_002_SRF_2"]
        assert all(p.lr.name.endswith("_LR.png") for p in ds.pairs)
    with pytest.raises(LesrcnnError, match="no image_SRF_3"):
        find_dataset(tmp_path / "Set5", 3)
    with pytest.raises(LesrcnnError, match="x2 pairs, not x4"):
        find_dataset(srf, 4)
    hr, lr = load_pair(find_dataset(srf, 2).pairs[0], 2)
    assert hr.shape == (24, 24, 3) and lr.shape == (12, 12, 3)


def test_basicsr_layout(tmp_path):
    root = _basicsr(tmp_path / "Set14")
    ds = find_dataset(root, 2)
    assert (ds.name, ds.layout) == ("Set14", "basicsr")
    assert [(p.name, p.lr.name) for p in ds.pairs] == [("baby", "babyx2.png"), ("bird", "birdx2.png")]
    ds = find_dataset(root, 3)  # no X3 folder: LR made with MATLAB bicubic
    assert ds.layout == "hr-only" and all(p.lr is None for p in ds.pairs)
    (root / "LR_bicubic" / "X2" / "birdx2.png").unlink()
    with pytest.raises(LesrcnnError, match="no LR image for .*bird"):
        find_dataset(root, 2)


def test_div2k_style_prefixed_folders(tmp_path):
    root = _basicsr(tmp_path / "DIV2K", hr="DIV2K_valid_HR", lr="DIV2K_valid_LR_bicubic")
    ds = find_dataset(root, 2)
    assert (ds.name, ds.layout, len(ds.pairs)) == ("DIV2K", "basicsr", 2)


def test_basicsr_benchmark_layout_gtmod12_lrbicx(tmp_path):
    """The benchmark sets as BasicSR distributes them: GTmod12/ + LRbicx2/3/4/ (+ original/, never scored)."""
    root = tmp_path / "Set5"
    for i, n in enumerate(("baby", "bird")):
        _img(root / "GTmod12" / f"{n}.png", 24, 24, i)
        _img(root / "original" / f"{n}.png", 25, 26, i)
        for s in (2, 4):
            _img(root / f"LRbicx{s}" / f"{n}.png", 24 // s, 24 // s, i)
    for folder, s in ((root, 2), (root / "GTmod12", 4)):
        ds = find_dataset(folder, s)
        assert (ds.name, ds.layout) == ("Set5", "basicsr")
        assert [(p.name, p.hr.parent.name, p.lr.parent.name) for p in ds.pairs] == \
            [("baby", "GTmod12", f"LRbicx{s}"), ("bird", "GTmod12", f"LRbicx{s}")]
    ds = find_dataset(root, 3)  # no LRbicx3: LR made from GTmod12 with MATLAB bicubic
    assert ds.layout == "hr-only" and [p.hr.parent.name for p in ds.pairs] == ["GTmod12", "GTmod12"]
    with pytest.raises(LesrcnnError, match="LR"):
        find_dataset(root / "LRbicx2", 2)


def test_hr_folder_is_named_by_its_parent(tmp_path):
    root = _basicsr(tmp_path / "Set14")
    ds = find_dataset(root / "HR", 2)
    assert (ds.name, ds.layout) == ("Set14", "basicsr")  # the paper's row, with the LR beside it
    plain = tmp_path / "Urban100" / "HR"
    _img(plain / "a.png")
    ds = find_dataset(plain, 4)
    assert (ds.name, ds.layout, [p.name for p in ds.pairs]) == ("Urban100", "hr-only", ["a"])


def test_plain_folder_every_image_is_hr(tmp_path):
    root = tmp_path / "T91"
    _img(root / "a.png")
    _img(root / "sub" / "b.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"x")
    (root / ".a.png.lesrcnn-tmp-0123abcd").write_bytes(b"x")  # a killed run's temp file
    ds = find_dataset(root, 2)
    assert (ds.name, ds.layout) == ("T91", "hr-only")
    assert [p.name for p in ds.pairs] == ["a", os.path.join("sub", "b")]
    assert hr_images(root) == [root / "a.png", root / "sub" / "b.jpg"]


def test_lr_only_folders_are_refused(tmp_path):
    """An LR_bicubic/X2 folder alone must not be scored (or trained on) as if it held HR images."""
    root = tmp_path / "Set5"
    _img(root / "LR_bicubic" / "X2" / "babyx2.png", 12, 12)
    for folder in (root, root / "LR_bicubic", root / "LR_bicubic" / "X2"):
        with pytest.raises(LesrcnnError, match="LR"):
            find_dataset(folder, 2)
        with pytest.raises(LesrcnnError, match="LR"):
            hr_images(folder)
    mixed = tmp_path / "mixed"
    _img(mixed / "a.png")
    _img(mixed / "more" / "LR_bicubic" / "X2" / "ax2.png", 12, 12)
    with pytest.raises(LesrcnnError, match="mixes LR images"):
        find_dataset(mixed, 2)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(LesrcnnError, match="not found"):
        find_dataset(tmp_path / "nope", 2)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(LesrcnnError, match="not a folder"):
        find_dataset(tmp_path / "file.png", 2)
    (tmp_path / "empty" / "HR").mkdir(parents=True)
    with pytest.raises(LesrcnnError, match="no images"):
        find_dataset(tmp_path / "empty", 2)


def test_decompression_bomb_in_a_data_folder_is_the_pixel_limit_error(tmp_path):
    root = tmp_path / "bombs"
    _img(root / "fine.png")
    (root / "bomb.png").write_bytes(png_bytes(np.zeros((1, 1, 3), np.uint8), bits=8, width=60_000, height=60_000))
    ds = find_dataset(root, 2)
    bomb = next(p for p in ds.pairs if p.name == "bomb")
    with pytest.raises(LesrcnnError, match=r"bomb\.png: 60000x60000 = 3600\.0 MP is above the limit") as e:
        load_pair(bomb, 2)
    assert "\n" not in str(e.value)
    with pytest.raises(LesrcnnError, match="above the limit"):
        read_rgb(root / "bomb.png")


def test_read_rgb_gives_the_papers_rgb(tmp_path):
    g = natural_image(10, 12)[..., 0]
    Image.fromarray(g).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g.png"), np.repeat(g[..., None], 3, axis=2))
    rgba = np.concatenate([natural_image(10, 12), np.full((10, 12, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgba[..., :3])  # alpha dropped
    deep = np.random.default_rng(0).integers(0, 65536, (5, 6, 3)).astype(np.uint16)
    (tmp_path / "d.png").write_bytes(png_bytes(deep))
    got = read_rgb(tmp_path / "d.png")
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - deep / 257).max() <= 0.5 + 1e-9


def test_list_images_follows_folder_links_once_and_never_loops(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _img(data / "a.png")
    _img(elsewhere / "b.png")
    (data / "sub").mkdir()
    os.symlink(data, data / "sub" / "up")  # a loop back to the root
    os.symlink(data / "sub" / "self", data / "sub" / "self")  # a link to itself
    os.symlink(elsewhere, data / "sub" / "linked")  # images kept elsewhere: read, as upscale reads them
    assert list_images(data) == [data / "a.png", data / "sub" / "linked" / "b.png"]
    os.symlink(elsewhere, data / "again")  # the same folder twice: read once, by the first path met
    assert list_images(data) == [data / "a.png", data / "again" / "b.png"]
