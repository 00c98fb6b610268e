"""The optimised CPU path and ``lesrcnn bench`` (issue 4). Correctness only: never timings."""
import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lesrcnn import accel
from lesrcnn import bench as B
from lesrcnn.accel import CpuAccelerator
from lesrcnn.errors import LesrcnnError
from lesrcnn.model import VARIANTS, build, init_interpolation
from lesrcnn.upscale import forward_tiled, prepare

from conftest import SHARED, assert_one_line_error, needs_shared, official, run_cli


def _both(m, x, s):
    """(module path: NCHW, unfused; accelerator: channels-last, fused oneDNN) outputs."""
    with torch.no_grad():
        ref = m(x, s)
    y = CpuAccelerator(m)(x.contiguous(memory_format=torch.channels_last), s)
    return ref, y


@pytest.mark.skipif(not accel.available(), reason="this torch build has no fused oneDNN convolutions")
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


@pytest.mark.skipif(not accel.available(), reason="this torch build has no fused oneDNN convolutions")
def test_accelerator_is_a_snapshot_and_handles_shapes():
    m = init_interpolation(build(2), seed=0).eval()
    acc = CpuAccelerator(m)
    x = torch.rand(1, 3, 12, 12)
    before = acc(x, 2)
    with torch.no_grad():
        m.irb[0].weight.mul_(0.5)  # the model changes; the accelerator built before does not
        ref2 = m(x, 2)
    assert torch.equal(acc(x, 2), before) and (ref2 - before).abs().max() > 1e-3
    assert (CpuAccelerator(m)(x, 2) - ref2).abs().max() < 1e-5  # a new one follows the new weights
    for h, w in ((5, 9), (12, 12), (7, 3)):  # several cached shapes
        r, y = _both(m, torch.rand(1, 3, h, w), 2)
        assert (y - r).abs().max() < 1e-5


def test_forward_is_pure_and_autograd_works():
    m = build(2)
    assert not any("fast" in k or "fuse" in k for k in vars(m))  # no hidden switches
    x = torch.rand(1, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = m(x)
    y.mean().backward()
    assert m.head.weight.grad is not None


def test_prepare_and_tiles_give_the_same_result():
    m = init_interpolation(build(3), seed=2)
    x = torch.rand(1, 3, 30, 26)
    with torch.no_grad():
        ref = m(x)
    pm = prepare(m, "cpu")
    full = forward_tiled(pm, x, 3)
    tiled = forward_tiled(pm, x, 3, tile=14)
    assert (full - ref).abs().max() < 1e-5 and (tiled - ref).abs().max() < 1e-5
    if accel.available():
        acc = CpuAccelerator(m)
        assert (forward_tiled(acc, x, 3, tile=14) - ref).abs().max() < 1e-5


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
    assert B.gemm_peak(n=128, reps=1) > 0
    assert B.lr_size(256, 3) == 85 and B.lr_size(512, 2) == 256
    assert B._csv((2, 3, 4), "2, 3 or 4")("2, 4,2") == [2, 4]
    for bad in ("5", "a", "", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            B._csv((2, 3, 4), "2, 3 or 4")(bad)


def test_bench_cli_json_and_table(tmp_path):
    backends = "eager-nchw,torch,onnx"
    r = run_cli("bench", "--scales", "3", "--sizes", "24", "--backends", backends, "--repeat", "2", "--warmup", "0",
                "--gemm-size", "256", "--no-file", "--json", check=True)
    d = json.loads(r.stdout)
    rows = d["rows"]
    keys = {"backend", "scale", "size", "seconds", "mpx_per_s", "gflops", "peak_fraction", "peak_rss_mb"}
    for row in rows:
        assert keys <= set(row)
        assert row["seconds"] > 0 and row["gflops"] > 0 and row["peak_fraction"] > 0 and row["peak_rss_mb"] > 10
        assert row["hr"] == [24, 24] and row["lr"] == [8, 8]
    measured = {row["backend"] for row in rows}
    assert {"eager-nchw", "torch"} <= measured
    assert ("onnx" in measured) == (importlib.util.find_spec("onnxruntime") is not None)
    assert any("auto (fp32, cpu) picks" in line for line in d["auto"])
    r = run_cli("bench", "--scales", "2,4", "--sizes", "16", "--backends", "eager-nchw,torch", "--repeat", "1",
                "--gemm-size", "256", "--no-file", check=True)
    assert "eager-nchw" in r.stdout and "GEMM peak" in r.stdout and "vs eager" in r.stdout and "picks" in r.stdout
    assert_one_line_error(run_cli("bench", "--backends", "tpu"), contains="unknown")
    assert_one_line_error(run_cli("bench", "--scales", "5"), contains="scales")
    assert_one_line_error(run_cli("bench", "--sizes", "x"), contains="sizes")
    assert_one_line_error(run_cli("bench", "--backends", ","), contains="empty")


def test_whole_file_job_reports_its_parts(tmp_path):
    job = B.whole_file(None, 1, size=(64, 40), scale=2)
    assert job["output"] == "128x80 JPEG" and 0 < job["network_share"] <= 1 and job["peak_rss_mb"] > 10
    assert abs(job["decode_s"] + job["upscale_s"] + job["encode_s"] - job["wall_s"]) < 1e-6


def test_cuda_rows_of_the_gpu_benchmark_when_a_gpu_is_present():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench", script)
    G = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(G)
    m = init_interpolation(build(2), seed=0).eval()
    ref = B.make_runner("eager-nchw", m, 2, 16, 1)()
    out = G.make_runner(m, torch.float32, 2, 16)()
    assert np.abs(out.float().cpu().numpy() - ref.numpy()).max() < 1e-3
    for dtype in (torch.bfloat16, torch.float16):
        out = G.make_runner(m, dtype, 2, 16)()
        assert out.shape == ref.shape and bool(torch.isfinite(out).all())
    assert G.gemm_peak(torch.float32, n=256) > 0
