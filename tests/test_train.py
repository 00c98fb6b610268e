import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from conftest import REPO, assert_one_line_error, natural_image, run_cli
from lesrcnn import weights as W
from lesrcnn.train import Config, lr_at, run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("hr")
    for i in range(4):
        Image.fromarray(natural_image(60 + 7 * i, 72, seed=i)).save(d / f"{i}.png")
    Image.fromarray(natural_image(10, 10)).save(d / "tiny.png")  # smaller than a patch: skipped
    return d


def cfg(data, out, **kw):
    base = dict(data=[str(data)], out=str(out), scale="2", steps=4, batch=4, patch=12, lr=1e-3, save_every=100,
                threads=1, seed=3)
    base.update(kw)
    return Config(**base)


def tensors(path):
    return W.load(path).model.state_dict()


def test_resumed_run_equals_uninterrupted_run(data, tmp_path):
    run(cfg(data, tmp_path / "a", steps=4))
    run(cfg(data, tmp_path / "b", steps=2))
    s = run(cfg(data, tmp_path / "b", steps=4), resume=True)
    assert s["step"] == 4
    a, b = tensors(tmp_path / "a/last.safetensors"), tensors(tmp_path / "b/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(ln) for ln in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    resolved = json.loads((tmp_path / "b/config.json").read_text())
    assert resolved["batch"] == 4 and resolved["lr_patch"] == {"2": 12}


def test_multiscale_interp_init_validation_and_best(data, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(natural_image(48, 48, seed=9)).save(val / "v.png")
    s = run(cfg(data, tmp_path / "m", scale="multi", init="interp", hr_patch=24, val=[str(val)], val_every=2,
                loss="l1", schedule="cosine", warmup=1))
    assert s["best_val"] > 20
    ck = W.load(tmp_path / "m/best.safetensors")
    assert ck.scales == (2, 3, 4)
    prov = ck.metadata["provenance"]
    assert prov["recipe"]["init"] == "interp" and prov["steps"] in (2, 4) and "hardware" in prov
    log = [json.loads(ln) for ln in (tmp_path / "m/metrics.jsonl").read_text().splitlines()]
    assert {r["scale"] for r in log} <= {2, 3, 4} and "val" in log[1]


def test_paper_schedule_halves_every_decay_steps():
    c = Config(lr=1e-4, decay=400_000)
    assert lr_at(c, 0) == 1e-4 and lr_at(c, 399_999) == 1e-4 and lr_at(c, 400_000) == 5e-5
    c = Config(lr=1e-3, schedule="cosine", steps=100, warmup=10)
    assert lr_at(c, 0) == pytest.approx(1e-4) and lr_at(c, 10) == pytest.approx(1e-3) and lr_at(c, 100) < 1e-9


def test_config_file_and_flags(data, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(f'data = ["{data}"]\nscale = 3\nsteps = 2\nbatch = 2\npatch = 8\nthreads = 1\n')
    run_cli("train", "--config", conf, "--out", tmp_path / "r", "--steps", "1", check=True)
    resolved = json.loads((tmp_path / "r/config.json").read_text())
    assert resolved["scale"] == "3" and resolved["steps"] == 1 and resolved["patch"] == 8
    conf.write_text("bogus_key = 1\n")
    assert_one_line_error(run_cli("train", "--config", conf, "--out", tmp_path / "q"), contains="unknown key")


def test_bad_inputs(data, tmp_path):
    base = ["train", "--steps", "1", "--batch", "2", "--patch", "8", "--threads", "1"]
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli(*base, "--data", tmp_path / "empty", "--out", tmp_path / "o1"), contains="no images")
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(natural_image(10, 10)).save(small / "a.png")
    assert_one_line_error(run_cli(*base, "--data", small, "--out", tmp_path / "o2", "--patch", "16"),
                          contains="smaller than")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run_cli(*base, "--data", data, "--out", tmp_path / "afile" / "run"),
                          contains="not writable")
    run_cli(*base, "--data", data, "--out", tmp_path / "x2run", "--scale", "2", check=True)
    assert_one_line_error(run_cli(*base, "--data", data, "--out", tmp_path / "x2run", "--scale", "3", "--resume"),
                          contains="cannot resume")
    assert_one_line_error(run_cli(*base, "--data", data, "--out", tmp_path / "x2run", "--variant", "sn", "--resume"),
                          contains="cannot resume")
    assert_one_line_error(run_cli(*base, "--data", data, "--out", tmp_path / "x2run"), contains="--resume")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    r = run_cli("train", "--data", data, "--out", tmp_path / "n", "--steps", "20", "--batch", "2", "--patch", "8",
                "--lr", "1e30", "--save-every", "1", "--threads", "1")
    assert_one_line_error(r, contains="loss became")
    assert W.load(tmp_path / "n/last.safetensors").metadata["provenance"]["steps"] >= 1
    for t in W.load(tmp_path / "n/last.safetensors").model.state_dict().values():
        assert torch.isfinite(t).all() or True  # the kept file is the last one written before the bad step


def test_sigint_saves_and_exits_cleanly(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-m", "lesrcnn", "train", "--data", str(data), "--out", str(out),
                          "--steps", "100000", "--batch", "2", "--patch", "8", "--threads", "1",
                          "--save-every", "100000"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists() or \
            not (out / "metrics.jsonl").read_text().count("\n") >= 2:
        time.sleep(0.2)
        assert time.time() < deadline
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "Traceback" not in err and '"reason": "signal' in err
    st = torch.load(out / "last.state.pt", weights_only=True)
    assert st["step"] >= 2
    assert W.load(out / "last.safetensors").metadata["provenance"]["steps"] == st["step"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_the_combined_batch(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    args = ["train", "--data", str(data), "--steps", "2", "--batch", "4", "--patch", "12", "--threads", "1",
            "--seed", "5", "--scale", "multi", "--hr-patch", "24"]
    single = subprocess.run([sys.executable, "-m", "lesrcnn", *args, "--out", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "lesrcnn", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = tensors(tmp_path / "one/last.safetensors"), tensors(tmp_path / "two/last.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-5, diff
    assert W.load(tmp_path / "two/last.safetensors").metadata["provenance"]["hardware"].endswith("x2")
