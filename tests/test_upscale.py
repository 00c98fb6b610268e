"""The upscaling tool: the Upscaler API and `lesrcnn upscale`, on real files written here."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED, assert_one_line_error, natural_image, needs_shared, official, run_cli
from lesrcnn import Upscaler
from lesrcnn import weights as W
from lesrcnn.errors import LesrcnnError
from lesrcnn.io import ImageWarning, read_picture
from lesrcnn.metrics import psnr_y
from lesrcnn.model import build, init_interpolation
from lesrcnn.upscale import plan_tiles

from test_io import png_bytes


@pytest.fixture(scope="session")
def wfile(tmp_path_factory):
    """Multi-scale weights that compute a cubic interpolation (image-like output, no training)."""
    torch.manual_seed(0)
    return W.save(init_interpolation(build("multi")), tmp_path_factory.mktemp("w") / "interp.safetensors")


@pytest.fixture(scope="session")
def up2(wfile):
    return Upscaler(scale=2, weights=str(wfile), device="cpu", tile=0)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    d = a.astype(np.float64) - b.astype(np.float64)
    return 10 * np.log10(255.0**2 / max(np.mean(d * d), 1e-12))


# --- the Python API --------------------------------------------------------------------------------

def test_api_attributes_and_image_like_output(up2, wfile):
    assert up2.scale == 2 and up2.device.type == "cpu" and up2.tile == 0 and up2.overlap >= 1
    assert up2.checkpoint.scales == (2, 3, 4)
    lr = natural_image(40, 48)
    sr = up2.upscale(Image.fromarray(lr))
    assert isinstance(sr, Image.Image) and sr.mode == "RGB" and sr.size == (96, 80)
    bic = np.asarray(Image.fromarray(lr).resize((96, 80), Image.Resampling.BICUBIC))
    assert _psnr(np.asarray(sr), bic) > 28  # the interpolation net is close to bicubic
    auto = Upscaler(scale=3, weights=wfile)
    assert auto.tile >= 64 and auto.batch >= 1


@pytest.mark.parametrize("kind", ["u8-rgb", "u8-gray", "u16-rgb", "f32-rgba", "f64-gray", "u8-la"])
def test_numpy_in_numpy_out(up2, kind):
    rng = np.random.default_rng(1)
    base = natural_image(14, 18).astype(np.float32) / 255
    a = {"u8-rgb": (base * 255).astype(np.uint8),
         "u8-gray": (base[..., 0] * 255).astype(np.uint8),
         "u16-rgb": (base * 65535).astype(np.uint16),
         "f32-rgba": np.concatenate([base, rng.random((14, 18, 1), dtype=np.float32)], axis=2),
         "f64-gray": base[..., 1].astype(np.float64),
         "u8-la": np.stack([(base[..., 0] * 255).astype(np.uint8), np.full((14, 18), 200, np.uint8)], axis=2)}[kind]
    out = up2.upscale(a)
    assert out.dtype == a.dtype and out.shape == (28, 36, *a.shape[2:])
    if a.dtype.kind == "f":
        assert 0 <= out.min() and out.max() <= 1
    if kind == "u16-rgb":
        assert out.max() > 255 and np.any(out % 257 != 0)  # real 16-bit values, not 8-bit scaled
    if kind == "u8-la":
        assert np.all(out[..., 1] == 200)  # a constant alpha stays exactly constant


def test_gray_is_the_luma_of_the_rgb_result(up2):
    g = natural_image(16, 16)[..., 0]
    rgb = up2.upscale_array(np.repeat(g[..., None], 3, axis=2).astype(np.float32) / 255)
    gray = up2.upscale_array(g.astype(np.float32) / 255)
    assert gray.shape == (32, 32)
    np.testing.assert_allclose(gray, rgb @ np.float32([0.299, 0.587, 0.114]), atol=1e-6)


def test_torch_tensors_keep_dtype_device_and_layout(up2):
    x = torch.from_numpy(natural_image(10, 12)).permute(2, 0, 1)
    y = up2.upscale(x)
    assert y.dtype == torch.uint8 and y.shape == (3, 20, 24)
    yb = up2.upscale(x[None].float() / 255)
    assert yb.dtype == torch.float32 and yb.shape == (1, 3, 20, 24)
    assert (yb[0] * 255 - y.float()).abs().max() <= 1.0


def test_pil_modes(up2):
    rgba = Image.fromarray(np.dstack([natural_image(12, 12), np.tile(np.uint8([0, 255]), (12, 6))]))
    out = up2.upscale(rgba)
    assert out.mode == "RGBA" and out.size == (24, 24)
    assert up2.upscale(rgba.convert("L")).mode == "L"
    assert up2.upscale(rgba.convert("RGB").convert("P")).mode == "RGB"
    i16 = Image.fromarray((natural_image(12, 12)[..., 0].astype(np.uint16) * 257))
    assert i16.mode == "I;16" and up2.upscale(i16).mode == "I;16"


@pytest.mark.parametrize("scale,tile,size", [(2, 16, (45, 37)), (3, 24, (50, 29)), (4, 16, (20, 36))])
def test_tiled_equals_untiled(wfile, scale, tile, size):
    a = natural_image(*size, seed=scale).astype(np.float32) / 255
    whole = Upscaler(scale, wfile, tile=0).upscale_array(a)
    tiled_up = Upscaler(scale, wfile, tile=tile, batch=3)
    assert len(plan_tiles(*size, tile, tiled_up.overlap)) >= 6
    tiled = tiled_up.upscale_array(a)
    assert np.abs(tiled - whole).max() <= 1 / 255


def test_tiled_equals_untiled_with_trained_like_weights(tmp_path):
    """Weights that mix every channel everywhere (interpolation + noise): the receptive margin is
    what matters, and a too-small overlap is visibly wrong, so the check has teeth."""
    torch.manual_seed(1)
    m = init_interpolation(build(2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    f = W.save(m, tmp_path / "r.safetensors")
    a = np.random.default_rng(0).random((34, 33, 3), dtype=np.float32)  # 2x2 tiles, cut inside the image
    whole = Upscaler(2, f, tile=0).upscale_array(a)
    tiled = Upscaler(2, f, tile=16).upscale_array(a)
    assert np.abs(tiled - whole).max() <= 1 / 255
    with pytest.warns(ImageWarning, match="receptive margin"):
        short = Upscaler(2, f, tile=16, overlap=4)
    assert np.abs(short.upscale_array(a) - whole).max() > 5 / 255
    a = a[:, :16]  # self-ensemble: 3 tiles x 8 transforms, kept small
    ens_whole = Upscaler(2, f, tile=0, self_ensemble=True).upscale_array(a)
    ens_tiled = Upscaler(2, f, tile=16, self_ensemble=True).upscale_array(a)
    plain = Upscaler(2, f, tile=0).upscale_array(a)
    assert np.abs(ens_tiled - ens_whole).max() <= 1 / 255 and np.abs(ens_whole - plain).max() > 1e-3


def test_plan_tiles_covers_once():
    h, w = 53, 41
    cover = np.zeros((h, w), int)
    for (y0, y1, x0, x1), (py0, py1, px0, px1) in plan_tiles(h, w, 16, 5):
        cover[y0:y1, x0:x1] += 1
        assert py0 == max(0, y0 - 5) and px1 == min(w, x1 + 5) and 13 <= y1 - y0 <= 16
    assert (cover == 1).all()


def test_half_precision_falls_back_on_cpu(wfile):
    with pytest.warns(ImageWarning, match="CUDA"):
        up = Upscaler(2, wfile, precision="fp16", device="cpu")
    assert up.precision == "fp32" and up.dtype == torch.float32


def test_bad_arguments(wfile, tmp_path, monkeypatch):
    with pytest.raises(LesrcnnError, match="scale"):
        Upscaler(5, wfile)
    m2 = W.save(build(2), tmp_path / "x2.safetensors")
    with pytest.raises(LesrcnnError, match="cannot upscale x3"):
        Upscaler(3, m2)
    with pytest.raises(LesrcnnError, match="not found"):
        Upscaler(2, tmp_path / "missing.safetensors")
    monkeypatch.setitem(W.PRETRAINED, W.DEFAULT_WEIGHTS,
                        dict(W.PRETRAINED[W.DEFAULT_WEIGHTS], file="absent.safetensors"))
    with pytest.raises(LesrcnnError, match="--weights"):
        Upscaler(2)
    monkeypatch.undo()
    with pytest.raises(LesrcnnError, match="tile"):
        Upscaler(2, wfile, tile=3)
    up = Upscaler(2, wfile, tile=0)
    with pytest.raises(LesrcnnError, match="zero-size"):
        up.upscale(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError):
        up.upscale("not an image")


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_runtime_backends_tile_like_torch(wfile, backend):
    from lesrcnn.backends import installed

    if installed(backend):
        pytest.skip(installed(backend))
    a = natural_image(18, 22).astype(np.float32) / 255
    up = Upscaler(3, wfile, backend=backend, tile=16)
    assert up.backend == backend
    y = up.upscale_array(a)
    y_torch = Upscaler(3, wfile, backend="torch", tile=0).upscale_array(a)
    assert np.abs(y - y_torch).max() <= 1 / 255


def test_device_picker():
    from lesrcnn.upscale import pick_device

    assert pick_device("cpu").type == "cpu" and pick_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ("tpu", "gpu0", ""):
        with pytest.raises(LesrcnnError, match="--device"):
            pick_device(bad)
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(LesrcnnError, match="CUDA"):
                pick_device(spec)


def test_nan_output_is_refused(tmp_path):
    m = init_interpolation(build(2), seed=0)
    with torch.no_grad():
        m.tail.weight.fill_(3e38)  # finite but absurd weights: the output overflows float32 to Inf
    f = W.save(m, tmp_path / "broken.safetensors")
    from lesrcnn.backends import installed

    for backend in [b for b in ("torch", "onnx", "openvino") if not installed(b)]:
        up = Upscaler(2, f, backend=backend, tile=0)
        with pytest.raises(LesrcnnError, match="NaN or Inf"):
            up.upscale_array(natural_image(12, 12))
    out = tmp_path / "o.png"
    with pytest.raises(LesrcnnError, match="NaN or Inf"):
        up.upscale_file(_save(tmp_path / "i.png", natural_image(12, 12)), out)
    assert not out.exists()


def test_upscale_file_16bit_rgba_png(up2, tmp_path):
    rng = np.random.default_rng(5)
    rgb = natural_image(15, 17).astype(np.uint16) * 257 + rng.integers(0, 257, (15, 17, 3)).astype(np.uint16)
    alpha = np.linspace(0, 65535, 15 * 17).reshape(15, 17).astype(np.uint16)
    src = tmp_path / "deep.png"
    src.write_bytes(png_bytes(np.dstack([rgb, alpha])))
    dst = up2.upscale_file(src, tmp_path / "deep_x2.png")
    p = read_picture(dst)
    assert p.bits == 16 and (p.height, p.width) == (30, 34) and p.alpha is not None
    assert np.any(p.color % 257 != 0) and len(np.unique(p.alpha)) > 256  # 16 bits kept, not 8
    with pytest.raises(LesrcnnError, match="exists"):
        up2.upscale_file(src, dst)
    up2.upscale_file(src, dst, overwrite=True, format="tiff")  # format wins over the extension
    with Image.open(dst) as im:
        assert im.format == "TIFF"


# --- the command line -------------------------------------------------------------------------------

def _save(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def test_cli_folder_mirrors_the_tree_and_survives_a_corrupt_file(wfile, tmp_path):
    src = tmp_path / "in"
    _save(src / "a.png", natural_image(20, 24, seed=1))
    _save(src / "sub" / "b.jpg", natural_image(18, 14, seed=2), quality=95)
    _save(src / "sub" / "deeper" / "g.png", natural_image(10, 12, seed=3)[..., 0])
    (src / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (src / "notes.txt").write_text("not an image, not picked up")
    out = tmp_path / "out"
    r = run_cli("upscale", src, "-o", out, "-s", "2", "--weights", wfile, "--tile", "16")
    assert r.returncode == 1, r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["a.png", "sub/b.jpg", "sub/deeper/g.png"]
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "broken.png" in errors[0]
    summary = r.stderr.strip().splitlines()[-1]
    assert "3 images" in summary and "1 failed" in summary and " s," in summary and "MP" in summary
    assert Image.open(out / "a.png").size == (48, 40) and Image.open(out / "sub/deeper/g.png").mode == "L"

    # again: outputs exist -> refused, nothing touched; then --skip-existing, then --overwrite
    before = (out / "a.png").stat().st_mtime_ns
    r = run_cli("upscale", src / "a.png", src / "sub", "-o", out, "--weights", wfile, "--glob", "*.png")
    assert_one_line_error(r, 2, "exists")
    r = run_cli("upscale", src, "-o", out, "--weights", wfile, "--skip-existing", "--glob", "*.png")
    assert r.returncode == 1 and "skipped" in r.stderr  # broken.png is still broken
    assert (out / "a.png").stat().st_mtime_ns == before
    r = run_cli("upscale", src / "a.png", "-o", out, "--weights", wfile, "--overwrite", "--format", "webp",
                "--suffix", "_x2", "-q")
    assert r.returncode == 0 and r.stderr == "" and Image.open(out / "a_x2.webp").format == "WEBP"


def test_cli_never_overwrites_an_input(wfile, tmp_path):
    f = _save(tmp_path / "p.png", natural_image(8, 8))
    data = f.read_bytes()
    assert_one_line_error(run_cli("upscale", f, "-o", f, "--weights", wfile), 2, "is an input")
    assert_one_line_error(run_cli("upscale", tmp_path, "-o", tmp_path, "--weights", wfile), 2, "is an input")
    _save(tmp_path / "q.png", natural_image(8, 8))
    assert_one_line_error(run_cli("upscale", tmp_path, "-o", tmp_path, "--weights", wfile), 2, "(and 1 more) is an")
    (tmp_path / "q.png").unlink()
    assert f.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_cli_image_kinds(wfile, tmp_path):
    """EXIF-rotated JPEG, CMYK JPEG (warning), palette, 16-bit RGBA PNG in one folder run."""
    src = tmp_path / "kinds"
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(src / "rot.jpg", natural_image(12, 20), exif=exif.tobytes(), quality=95, dpi=(72, 72))
    Image.fromarray(natural_image(10, 10)).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    Image.fromarray(natural_image(10, 10)).convert("P", palette=Image.Palette.ADAPTIVE).save(src / "pal.png")
    (src / "deep.png").write_bytes(png_bytes(np.random.default_rng(0).integers(0, 65535, (6, 7, 4))
                                             .astype(np.uint16)))
    out = tmp_path / "o"
    r = run_cli("upscale", src, "-o", out, "-s", "3", "--weights", wfile)
    assert r.returncode == 0, r.stderr
    assert any("warning" in ln and "CMYK" in ln for ln in r.stderr.splitlines())
    with Image.open(out / "rot.jpg") as im:
        assert im.size == (36, 60) and im.getexif().get(0x0112) is None and im.info["dpi"] == (216, 216)
    assert Image.open(out / "cmyk.jpg").mode == "RGB" and Image.open(out / "pal.png").mode == "RGB"
    p = read_picture(out / "deep.png")
    assert p.bits == 16 and p.alpha is not None and (p.height, p.width) == (18, 21)


def test_cli_stdin_to_stdout(wfile, tmp_path):
    import subprocess

    from conftest import REPO
    f = _save(tmp_path / "s.png", natural_image(9, 11))
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-m", "lesrcnn", "upscale", "-", "-o", "-", "--weights", str(wfile),
                        "--format", "png", "-q"], input=f.read_bytes(), capture_output=True, env=env)
    assert r.returncode == 0, r.stderr
    import io
    assert Image.open(io.BytesIO(r.stdout)).size == (22, 18)


def test_cli_threads_reach_the_torch_backend(wfile, tmp_path):
    """-j N also sets torch's threads (the torch backend), not only the ONNX/OpenVINO runtimes'."""
    import subprocess

    from conftest import REPO
    f = _save(tmp_path / "t.png", natural_image(9, 11))
    code = ("import sys, torch; from lesrcnn.cli import main; torch.set_num_threads(2); "
            "rc = main(sys.argv[1:]); print(rc, torch.get_num_threads())")
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-c", code, "upscale", str(f), "-o", str(tmp_path / "o.png"),
                        "--weights", str(wfile), "--backend", "torch", "-j", "1", "-q"],
                       capture_output=True, text=True, env=env)
    assert r.stdout.split() == ["0", "1"], r.stderr


@pytest.mark.parametrize("case", ["not-image", "truncated", "huge-header", "missing-weights", "wrong-scale",
                                  "bad-scale", "no-output-folder", "missing-input"])
def test_cli_errors_are_one_line(wfile, tmp_path, case):
    good = _save(tmp_path / "good.png", natural_image(8, 8))
    args = [good, "-o", tmp_path / "out.png", "--weights", wfile]
    if case == "not-image":
        (tmp_path / "x.png").write_text("hello")
        args[0], want = tmp_path / "x.png", "not a readable image"
    elif case == "truncated":
        import io
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
        (tmp_path / "t.png").write_bytes(buf.getvalue()[:600])
        args[0], want = tmp_path / "t.png", "cannot decode"
    elif case == "huge-header":
        (tmp_path / "h.png").write_bytes(png_bytes(np.zeros((1, 1, 3), np.uint8), bits=8, width=50_000,
                                                   height=50_000))
        args[0], want = tmp_path / "h.png", "max-pixels"
    elif case == "missing-weights":
        args[-1], want = tmp_path / "nope.safetensors", "not found"
    elif case == "wrong-scale":
        args[-1], want = W.save(build(2), tmp_path / "x2.safetensors"), "cannot upscale x4"
        args += ["-s", "4"]
    elif case == "bad-scale":
        args, want = args + ["-s", "5"], "invalid choice"
    elif case == "no-output-folder":
        (tmp_path / "file").write_text("x")
        args[2], want = tmp_path / "file" / "sub" / "o.png", "cannot create the output folder"
    else:
        args[0], want = tmp_path / "absent.png", "no such file"
    r = run_cli("upscale", *args)
    assert_one_line_error(r, 2, want)
    assert r.stdout == "" and not (tmp_path / "out.png").exists()


def test_cli_uses_the_embedded_weights_by_default(tmp_path):
    f = _save(tmp_path / "a.png", natural_image(12, 10))
    r = run_cli("upscale", f, "-o", tmp_path / "b.png", "-s", "3")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "b.png").size == (30, 36)


@needs_shared
def test_official_x2_files_score_what_eval_reports(tmp_path):
    """Set5 LR -> `lesrcnn upscale` -> PSNR (paper protocol) == `lesrcnn eval` (both truncate)."""
    ck = official(2)
    srf = SHARED / "data/benchmarks/Set5/image_SRF_2"
    out = tmp_path / "sr"
    r = run_cli("upscale", *sorted(srf.glob("*_LR.png")), "-o", out, "-s", "2", "--weights", ck,
                "--quantize", "truncate")
    assert r.returncode == 0, r.stderr
    psnrs = []
    for hr in sorted(srf.glob("*_HR.png")):
        sr = np.asarray(Image.open(out / hr.name.replace("_HR", "_LR")).convert("RGB"))
        psnrs.append(psnr_y(sr, np.asarray(Image.open(hr).convert("RGB")), 2))
    ev = run_cli("eval", "--weights", ck, "--data", SHARED / "data/benchmarks/Set5", "--scale", "2",
                 "--format", "json", check=True)
    [row] = json.loads(ev.stdout)
    assert row["quantize"] == "truncate"
    assert float(np.mean(psnrs)) == pytest.approx(row["psnr"], abs=1e-9)
