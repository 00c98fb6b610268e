"""The optimised CPU path and ``lesrcnn bench`` (issue 4). Correctness only: never timings."""
import json

import numpy as np
import pytest
import torch

from lesrcnn import bench as B
from lesrcnn import model as M
from lesrcnn.errors import LesrcnnError
from lesrcnn.model import VARIANTS, build, init_interpolation
from lesrcnn.upscale import forward_tiled, prepare

from conftest import SHARED, assert_one_line_error, needs_shared, official, run_cli


def _both(m, x, s):
    """(module path: NCHW, unfused; fast path: channels-last, fused oneDNN) outputs."""
    with torch.no_grad():
        m.fast_cpu, m.fuse_rb = False, False
        ref = m(x, s) if m.multiscale else m(x)
        m.fast_cpu, m.fuse_rb = True, True
        xc = x.contiguous(memory_format=torch.channels_last)
        y = m(xc, s) if m.multiscale else m(xc)
    return ref, y


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scale", [2, 3, 4, "multi"])
def test_fast_path_equals_module_path(scale, variant):
    torch.manual_seed(1)
    m = build(scale, variant).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    for s in m.scales:
        x = torch.rand(2, 3, 13, 17)
        ref, y = _both(m, x, s)
        assert y.shape == ref.shape
        assert (y - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())
    if M._FAST_STATE["ok"] is False:
        pytest.skip("oneDNN fused convolutions unavailable in this torch build: module path used")


def test_fast_path_follows_weight_changes_and_shapes():
    m = init_interpolation(build(2), seed=0).eval()
    x = torch.rand(1, 3, 12, 12)
    ref, y = _both(m, x, 2)
    with torch.no_grad():
        m.irb[0].weight.mul_(0.5)  # in-place update: the packed weights must be refreshed
    ref2, y2 = _both(m, x, 2)
    assert (ref2 - ref).abs().max() > 1e-3
    assert (y2 - ref2).abs().max() < 1e-5
    for h, w in ((5, 9), (12, 12), (7, 3)):  # several cached shapes
        r, y = _both(m, torch.rand(1, 3, h, w), 2)
        assert (y - r).abs().max() < 1e-5


def test_autograd_uses_the_module_path():
    m = build(2)
    x = torch.rand(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = m(x)
    y.mean().backward()
    assert m.head.weight.grad is not None


def test_prepare_and_tiles_use_the_fast_path_with_the_same_result():
    m = init_interpolation(build(3), seed=2)
    x = torch.rand(1, 3, 30, 26)
    with torch.no_grad():
        m.fast_cpu = False
        ref = m(x)
    m.fast_cpu = True
    pm = prepare(m, "cpu")
    full = forward_tiled(pm, x, 3)
    tiled = forward_tiled(pm, x, 3, tile=14)
    assert (full - ref).abs().max() < 1e-5 and (tiled - ref).abs().max() < 1e-5


@needs_shared
def test_eval_keeps_the_paper_number_with_the_fast_path():
    r = run_cli("eval", "--weights", official(2), "--data", SHARED / "data" / "benchmarks" / "Set5", "--scale", "2",
                "--format", "json", check=True)
    res = json.loads(r.stdout)[0]
    assert abs(res["psnr"] - 37.651) <= 0.003 and abs(res["ssim"] - 0.9586) <= 0.0005


def test_runners_compute_the_same_image():
    m = init_interpolation(build(2), seed=0).eval()
    eager = B.make_runner("eager-nchw", m, 2, 16, 1)()
    fast = B.make_runner("torch", m, 2, 16, 1)()
    assert (eager - fast).abs().max() < 1e-5
    with pytest.raises(LesrcnnError):
        B.make_runner("tpu", m, 2, 16, 1)


def test_gemm_peak_and_sizes():
    assert B.gemm_peak("cpu", n=128, reps=1) > 0
    assert B.lr_size(256, 3) == 85 and B.lr_size(512, 2) == 256
    assert B._int_list("2, 4,2", "scales", {2, 3, 4}) == [2, 4]
    for bad in ("5", "a", ""):
        with pytest.raises(LesrcnnError):
            B._int_list(bad, "scales", {2, 3, 4})


def test_bench_cli_json(tmp_path):
    backends = "eager-nchw,torch"
    try:
        import onnxruntime  # noqa: F401

        backends += ",onnx,onnx-int8"
    except ImportError:
        pass
    r = run_cli("bench", "--scales", "3", "--sizes", "24", "--backends", backends, "--repeat", "2", "--warmup", "0",
                "--gemm-size", "256", "--json", check=True)
    rows = json.loads(r.stdout)
    assert isinstance(rows, list) and len(rows) == len(backends.split(","))
    keys = {"backend", "scale", "size", "seconds", "mpx_per_s", "gflops", "peak_fraction", "peak_rss_mb"}
    for row in rows:
        assert keys <= set(row)
        assert row["seconds"] > 0 and row["mpx_per_s"] > 0 and row["gflops"] > 0 and row["peak_fraction"] > 0
        assert row["peak_rss_mb"] > 10 and row["size"] == 24
    assert {(r["backend"], r["scale"]) for r in rows} == {(b, 3) for b in backends.split(",")}
    x3 = next(r for r in rows if r["scale"] == 3)
    assert x3["hr"] == [24, 24] and x3["lr"] == [8, 8]


def test_bench_cli_table_interleaved_and_errors():
    r = run_cli("bench", "--scales", "2,4", "--sizes", "16", "--backends", "eager-nchw,torch", "--repeat", "1",
                "--interleave", "--gemm-size", "256", check=True)
    assert "eager-nchw" in r.stdout and "GEMM peak" in r.stdout and "vs eager" in r.stdout
    assert_one_line_error(run_cli("bench", "--backends", "tpu"), contains="unknown")
    assert_one_line_error(run_cli("bench", "--scales", "5"), contains="scales")
    assert_one_line_error(run_cli("bench", "--sizes", "x"), contains="sizes")
    if not torch.cuda.is_available():
        r = run_cli("bench", "--backends", "cuda-fp16", "--sizes", "16", "--scales", "2")
        assert_one_line_error(r, contains="no backend")
        assert "not measured" in r.stderr


def test_bench_cuda_rows_when_a_gpu_is_present():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rows, _ = B.run_bench([2], [32], ["cuda-fp32", "cuda-bf16", "cuda-fp16"], repeat=1, warmup=1)
    assert {r["backend"] for r in rows} == {"cuda-fp32", "cuda-bf16", "cuda-fp16"}
    m = init_interpolation(build(2), seed=0).eval()
    ref = B.make_runner("eager-nchw", m, 2, 16, 1)()
    out = B.make_runner("cuda-fp32", m, 2, 16, 1)()
    assert np.abs(out.float().cpu().numpy() - ref.numpy()).max() < 1e-3
