import functools
import json

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, assert_one_line_error, natural_image, needs_shared, official, run_cli, run_main
from lesrcnn import weights as W
from lesrcnn.data import find_dataset
from lesrcnn.evaluate import evaluate
from lesrcnn.model import build, init_interpolation
from lesrcnn.resize import imresize
from lesrcnn.upscale import prepare

PAPER = {("Set5", 2): (37.651, 0.9586), ("Set5", 3): (33.933, 0.9231), ("Set5", 4): (31.884, 0.8903),
         ("Set14", 3): (30.123, 0.8380)}


@needs_shared
@pytest.mark.parametrize("dataset,scale", [pytest.param(*k, marks=pytest.mark.slow) if k[0] == "Set14" else k
                                           for k in PAPER])
def test_official_checkpoints_give_the_papers_numbers(dataset, scale):
    model = prepare(W.load(official(scale)).model)
    r = evaluate(model, find_dataset(SHARED / "data/benchmarks" / dataset, scale), scale, "truncate")
    psnr, ssim = PAPER[(dataset, scale)]
    assert abs(r.psnr - psnr) < 0.003 and abs(r.ssim - ssim) < 0.0002, r


@needs_shared
def test_round_gives_more_than_truncate():
    model = prepare(W.load(official(2)).model)
    ds = find_dataset(SHARED / "data/benchmarks/Set5", 2)
    assert evaluate(model, ds, 2, "round").psnr == pytest.approx(37.716, abs=0.003)


@needs_shared
def test_eval_cli_json_with_paper_numbers():
    r = run_cli("eval", "--weights", official(4), "--data", SHARED / "data/benchmarks/Set5", "--scale", "4",
                "--format", "json", check=True)
    [row] = json.loads(r.stdout)
    assert row["dataset"] == "Set5" and row["scale"] == 4 and row["images"] == 5 and row["quantize"] == "truncate"
    assert row["psnr"] == pytest.approx(31.884, abs=0.003) and row["paper_psnr"] == 31.88


@needs_shared
def test_bicubic_baseline_matches_the_paper_within_rounding():
    r = run_cli("eval", "--bicubic", "--data", SHARED / "data/benchmarks/Set5", "--scale", "2", "--format", "json",
                check=True)
    [row] = json.loads(r.stdout)
    assert row["psnr"] == pytest.approx(33.66, abs=0.03)


def _write_hr_folder(root, n=3, size=(50, 62)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(natural_image(*size, seed=i)).save(root / f"im{i}.png")
    return root


@pytest.fixture
def interp_weights(tmp_path):
    import torch
    torch.manual_seed(0)
    return W.save(init_interpolation(build("multi")), tmp_path / "interp.safetensors")


def test_layouts_agree_plain_hr_basicsr_selfexsr(tmp_path, interp_weights):
    hr_dir = _write_hr_folder(tmp_path / "plain")
    # BasicSR layout with LR made the same way, and the SelfExSR layout
    bs = tmp_path / "Mine"
    (bs / "HR").mkdir(parents=True)
    (bs / "LR_bicubic" / "X3").mkdir(parents=True)
    sx = tmp_path / "Other" / "image_SRF_3"
    sx.mkdir(parents=True)
    for i, p in enumerate(sorted(hr_dir.glob("*.png"))):
        hr = np.asarray(Image.open(p))
        hr = hr[: hr.shape[0] // 3 * 3, : hr.shape[1] // 3 * 3]
        Image.fromarray(hr).save(bs / "HR" / p.name)
        Image.fromarray(imresize(hr, 1 / 3)).save(bs / "LR_bicubic" / "X3" / f"{p.stem}x3.png")
        Image.fromarray(hr).save(sx / f"img_{i:03d}_SRF_3_HR.png")
        Image.fromarray(imresize(hr, 1 / 3)).save(sx / f"img_{i:03d}_SRF_3_LR.png")
    rows = []
    for d in (hr_dir, bs, sx.parent):
        r = run_cli("eval", "--weights", interp_weights, "--data", d, "-s", "3", "--format", "json", check=True)
        rows.append(json.loads(r.stdout)[0])
    assert rows[0]["images"] == rows[1]["images"] == rows[2]["images"] == 3
    assert rows[0]["psnr"] == pytest.approx(rows[1]["psnr"], abs=1e-9) == pytest.approx(rows[2]["psnr"], abs=1e-9)
    assert "paper_psnr" not in rows[0]


def test_csv_and_output_file(tmp_path, interp_weights):
    d = _write_hr_folder(tmp_path / "Set5")
    out = tmp_path / "res.csv"
    r = run_cli("eval", "--weights", interp_weights, "--data", d, "-s", "2", "-s", "4", "--format", "csv",
                "--output", out, check=True)
    lines = out.read_text().strip().splitlines()
    assert lines[0].startswith("dataset,scale") and len(lines) == 3 and r.stdout.strip() == out.read_text().strip()


def test_grayscale_images_are_evaluated_as_rgb(tmp_path, interp_weights):
    d = tmp_path / "gray"
    d.mkdir()
    Image.fromarray(natural_image(40, 40)[..., 0]).save(d / "g.png")
    r = run_cli("eval", "--weights", interp_weights, "--data", d, "-s", "2", "--format", "json", check=True)
    assert json.loads(r.stdout)[0]["images"] == 1


def test_tiled_evaluation_equals_untiled(interp_weights):
    import torch
    from lesrcnn.upscale import forward_tiled
    model = prepare(W.load(interp_weights).model)
    for p in model.parameters():  # make every channel matter
        p.data.add_(torch.randn_like(p) * 0.01)
    x = torch.rand(1, 3, 70, 53)
    for s in (2, 3, 4):
        a = forward_tiled(model, x, s, tile=0)
        b = forward_tiled(model, x, s, tile=24)
        assert (a - b).abs().max() < 1e-4


def test_bad_inputs_one_line_exit_2(tmp_path, interp_weights, capfd):
    run_cli = functools.partial(run_main, capfd)  # the real entry point, in this process (fast)
    assert_one_line_error(run_cli("eval", "--weights", interp_weights, "--data", tmp_path / "nope"),
                          contains="not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("eval", "--weights", interp_weights, "--data", tmp_path / "empty"),
                          contains="no images")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert_one_line_error(run_cli("eval", "--weights", interp_weights, "--data", bad), contains="a.png")
    mm = tmp_path / "mm" / "image_SRF_2"
    mm.mkdir(parents=True)
    Image.fromarray(natural_image(40, 40)).save(mm / "a_HR.png")
    Image.fromarray(natural_image(15, 20)).save(mm / "a_LR.png")
    assert_one_line_error(run_cli("eval", "--weights", interp_weights, "--data", mm.parent, "-s", "2"),
                          contains="mismatch")
    x2 = W.save(build(2), tmp_path / "x2.safetensors")
    assert_one_line_error(run_cli("eval", "--weights", x2, "--data", mm.parent, "-s", "3"), contains="x3")
    assert_one_line_error(run_cli("eval", "--weights", x2, "--data", mm.parent, "-s", "5"))


@needs_shared
def test_embedded_weights_beat_bicubic_on_set5_x2():
    ours = json.loads(run_cli("eval", "--data", SHARED / "data/benchmarks/Set5", "-s", "2", "--format", "json",
                              check=True).stdout)[0]
    bic = json.loads(run_cli("eval", "--bicubic", "--data", SHARED / "data/benchmarks/Set5", "-s", "2",
                             "--format", "json", check=True).stdout)[0]
    assert ours["psnr"] > bic["psnr"] + 1.5 and ours["method"] == "LESRCNN-S"
