"""lesrcnn.ray: a real local Ray (2 CPUs); every output equals the single-process result."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import REPO, natural_image, run_cli

ray = pytest.importorskip("ray")

from lesrcnn.io import Picture, read_picture, write_picture  # noqa: E402
from lesrcnn.ray import connect, upscale_dataset  # noqa: E402
from lesrcnn.upscale import Upscaler  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module; its address (the CLI test connects to it)."""
    if ray.is_initialized():
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [old])])  # the workers' lesrcnn
    try:
        connect(None, num_cpus=2)
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A few small real image files of every kind the CLI handles."""
    d = tmp_path_factory.mktemp("ray_in")
    pics = {
        "rgb.png": Picture(color=natural_image(20, 24, seed=1)),
        "gray.png": Picture(color=natural_image(18, 16, seed=2)[..., :1]),
        "deep.png": Picture(color=natural_image(12, 14, seed=3).astype(np.uint16) * 257),
        "alpha.png": Picture(color=natural_image(16, 16, seed=4), alpha=natural_image(16, 16, seed=5)[..., 0]),
        "photo.jpg": Picture(color=natural_image(22, 18, seed=6)),
    }
    for name, pic in pics.items():
        write_picture(pic, d / name, "JPEG" if name.endswith(".jpg") else "PNG")
    return d


def _same(a, b) -> None:
    pa, pb = read_picture(a), read_picture(b)
    assert pa.color.dtype == pb.color.dtype and np.array_equal(pa.color, pb.color), a
    assert (pa.alpha is None) == (pb.alpha is None) and (pa.alpha is None or np.array_equal(pa.alpha, pb.alpha))


def test_outputs_equal_single_process_and_resume(cluster, inputs, tmp_path):
    files = sorted(inputs.iterdir())
    items = [(str(f), str(tmp_path / "out" / f"{f.stem}_x2.png")) for f in files]
    items.append(((inputs / "rgb.png").read_bytes(), str(tmp_path / "out" / "from_bytes.png")))
    items.append((str(inputs / "missing.png"), str(tmp_path / "out" / "missing.png")))
    rep = upscale_dataset(items, scale=2, upscaler_options={"tile": 0})
    assert (rep.written, rep.skipped) == (len(files) + 1, 0)
    assert len(rep.failed) == 1 and "missing.png" in rep.failed[0][1]
    assert not (tmp_path / "out" / "missing.png").exists()
    up = Upscaler(2, None, "cpu", tile=0)
    (tmp_path / "ref").mkdir()
    for f in files:
        up.upscale_file(f, tmp_path / "ref" / f"{f.stem}.png")
        _same(tmp_path / "out" / f"{f.stem}_x2.png", tmp_path / "ref" / f"{f.stem}.png")
    _same(tmp_path / "out" / "from_bytes.png", tmp_path / "ref" / "rgb.png")
    # resume: two outputs lost, one replaced by a file that must be kept as it is
    (tmp_path / "out" / "gray_x2.png").unlink()
    (tmp_path / "out" / "deep_x2.png").unlink()
    (tmp_path / "out" / "rgb_x2.png").write_bytes(b"kept")
    rep = upscale_dataset(items[:-1], scale=2, upscaler_options={"tile": 0})
    assert (rep.written, rep.skipped, rep.failed) == (2, len(files) - 1, [])
    assert (tmp_path / "out" / "rgb_x2.png").read_bytes() == b"kept"
    _same(tmp_path / "out" / "deep_x2.png", tmp_path / "ref" / "deep.png")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_ray_equals_cli(cluster, inputs, tmp_path):
    ref = run_cli("upscale", inputs, "-o", tmp_path / "ref", "-s", "3", "-q", check=True)
    assert ref.returncode == 0
    r = run_cli("upscale", inputs, "-o", tmp_path / "out", "-s", "3", "--ray", cluster, check=True)
    assert f"{len(list(inputs.iterdir()))} images x3 on Ray" in r.stderr, r.stderr
    names = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "out").iterdir()) and len(names) == 5
    for n in names:
        _same(tmp_path / "out" / n, tmp_path / "ref" / n)
    again = run_cli("upscale", inputs, "-o", tmp_path / "out", "-s", "3", "--ray", cluster, check=True)
    assert "nothing to do" in again.stderr  # a rerun resumes: all exist


def test_bad_address_is_one_line(tmp_path, inputs):
    r = run_cli("upscale", inputs / "rgb.png", "-o", tmp_path / "x.png", "--ray", "127.0.0.1:1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("lesrcnn: error")], r.stderr[-2000:]
