import copy
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, assert_one_line_error, natural_image, run_cli
from lesrcnn import weights as W
from lesrcnn.errors import LesrcnnError
from lesrcnn.io import TEMP_MARK
from lesrcnn.model import LESRCNN
from lesrcnn.resize import imresize
from lesrcnn.train import Options, load_config, make_options, run
from lesrcnn.train_data import PatchSampler, load_images
from lesrcnn.train_loop import fuse_rb_for_training, lr_at

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("hr")
    for i in range(4):
        Image.fromarray(natural_image(60 + 7 * i, 72, seed=i)).save(d / f"{i}.png")
    Image.fromarray(natural_image(10, 10)).save(d / "tiny.png")  # smaller than a patch: skipped
    return d


def cfg(data, out, **kw):
    base = dict(data=[str(data)], out=str(out), scale="2", steps=4, batch=4, patch=12, lr=1e-3, save_every=100,
                log_every=1, threads=1, seed=3)
    return Options(**(base | kw))


def tensors(path):
    return W.load(path).model.state_dict()


def steps_logged(run_dir):
    return [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# --- the sampler -----------------------------------------------------------------------------------

def _blocky(rng, h, w, s):
    """An LR image and its nearest-neighbour HR: an HR patch is aligned with its LR patch exactly
    when it equals the LR patch with every pixel repeated s x s, under any flip or rotation."""
    lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return lr, np.repeat(np.repeat(lr, s, 0), s, 1)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_sampler_patches_stay_aligned_under_every_flip_and_rotation(s):
    rng = np.random.default_rng(s)
    pairs = [_blocky(rng, h, w, s) for h, w in ((9, 13), (15, 8), (11, 11))]
    sampler = PatchSampler([hr for _, hr in pairs], {s: [lr for lr, _ in pairs]}, {s: 6}, CPU)
    seen = set()
    for _ in range(40):
        _, p = sampler.draw(np.random.default_rng(len(seen) + 100 * _), 8)
        lr = sampler.lr[s].gather(torch.from_numpy(p), 6).numpy()
        hr = sampler.hr.gather(torch.from_numpy(p), 6 * s, stride=s).numpy()
        for k in range(len(p)):
            assert np.array_equal(np.repeat(np.repeat(lr[k], s, 0), s, 1), hr[k])
            i, y, x, fh, fv, rot = p[k]
            ref = pairs[i][0][y:y + 6, x:x + 6]  # the old per-patch numpy code's order: h-flip, v-flip, transpose
            ref = ref[:, ::-1] if fh else ref
            ref = ref[::-1] if fv else ref
            ref = ref.transpose(1, 0, 2) if rot else ref
            assert np.array_equal(lr[k], ref)
            seen.add((fh, fv, rot))
    assert len(seen) == 8  # every flip/rotation combination was checked


def test_bicubic_patches_are_the_bicubic_lr_of_their_hr_patches():
    hrs = [natural_image(50, 61, seed=7)]
    sampler = PatchSampler(hrs, {2: [imresize(hrs[0][:50, :60], 0.5)]}, {2: 16}, CPU)
    s, x, y = sampler.batch(np.random.default_rng(0), 16)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    lr = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    hr = (y * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for a, b in zip(lr, hr):
        made = imresize(b, 0.5).astype(int)  # away from the patch border the kernel sees the same pixels
        assert np.abs(made[3:-3, 3:-3] - a[3:-3, 3:-3].astype(int)).max() <= 1


@pytest.mark.parametrize("patch", [8, 12, 16])
def test_multiscale_sampler_never_meets_an_lr_image_smaller_than_its_patch(patch):
    # issue 9.6: an image kept for the x2 patch, cropped to a multiple of 12, left x4 too small
    sizes = range(2 * patch, 4 * patch + 13)
    hrs = [natural_image(h, h + 1, seed=h) for h in sizes]
    lrs = {s: [imresize(hr[:hr.shape[0] // s * s, :hr.shape[1] // s * s], 1 / s) for hr in hrs] for s in (2, 3, 4)}
    sampler = PatchSampler(hrs, lrs, {2: patch, 3: patch, 4: patch}, CPU)
    rng = np.random.default_rng(0)
    got = {sampler.batch(rng, 4)[0] for _ in range(60)}
    assert got == {2, 3, 4}


def test_real_degradation_patches_are_reproducible_and_a_rank_gets_its_slice():
    hrs = [natural_image(40 + 9 * i, 50, seed=i) for i in range(3)]
    sampler = PatchSampler(hrs, {}, {2: 12, 3: 8, 4: 6}, CPU)  # no LR images: made per patch
    s, lr, hr = sampler.batch(np.random.default_rng(4), 8)
    again = sampler.batch(np.random.default_rng(4), 8)
    rank1 = sampler.batch(np.random.default_rng(4), 8, slice(4, 8))
    assert lr.shape[-1] * s == hr.shape[-1] and torch.equal(lr, again[1]) and torch.equal(hr, again[2])
    assert torch.equal(lr[4:], rank1[1]) and torch.equal(hr[4:], rank1[2])
    assert (lr - torch.nn.functional.avg_pool2d(hr, s)).abs().mean() < 0.1  # LR of its own HR patch
    pooled = PatchSampler(hrs, {}, {2: 12, 3: 8, 4: 6}, CPU, workers=2)  # what a GPU run uses
    try:
        assert pooled.pool is None and all(torch.equal(a, b) for a, b in zip(
            pooled.batch(np.random.default_rng(4), 8)[1:], (lr, hr)))
        assert pooled.pool is not None and pooled.pool._max_workers == 2
    finally:
        pooled.close()
    assert pooled.pool is None


def test_rescaled_copies_are_matlab_downscales_with_their_own_lr(data):
    hrs, lrs = load_images([str(data)], (2, 3), {2: 24, 3: 24}, True, log=lambda _: None, rescale=(0.5, 0.2))
    assert len(hrs) == 8  # 4 images and their x0.5 copies; the x0.2 copies and tiny.png are below 24 px
    for hr, copy_ in zip(hrs[::2], hrs[1::2]):
        np.testing.assert_array_equal(copy_, imresize(hr, 0.5))
    for s in (2, 3):
        for hr, lr in zip(hrs, lrs[s]):
            h, w = hr.shape[0] // s * s, hr.shape[1] // s * s
            np.testing.assert_array_equal(lr, imresize(hr[:h, :w], 1 / s))


def test_too_small_for_a_scale_is_one_line():
    hrs = [natural_image(20, 20)]
    with pytest.raises(LesrcnnError, match="x4"):
        PatchSampler(hrs, {2: [imresize(hrs[0], 0.5)], 4: [imresize(hrs[0], 0.25)]}, {2: 8, 4: 8}, CPU)


def test_training_runs_the_rb_fused_with_the_same_function_and_gradients():
    torch.manual_seed(0)
    plain = LESRCNN(scales=(2, 3, 4)).double()
    fused = fuse_rb_for_training(copy.deepcopy(plain))
    assert list(fused.state_dict()) == list(plain.state_dict())  # checkpoints keep the module's form
    for s in (2, 3, 4):
        x, got = torch.rand(2, 3, 10, 12, dtype=torch.float64), []
        for m in (plain, fused):
            calls = []
            hook = m.upsample[f"x{s}"][0].register_forward_hook(lambda *a: calls.append(1))
            m.zero_grad()
            y = m(x, s)
            y.square().sum().backward()
            hook.remove()
            got.append((y, [p.grad for p in m.parameters() if p.grad is not None], len(calls)))
        (y0, g0, n0), (y1, g1, n1) = got
        assert (n0, n1) == (2, 1)  # one upsampler pass instead of two
        assert torch.allclose(y0, y1, atol=1e-12) and len(g0) == len(g1)
        assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g0, g1))


# --- runs ------------------------------------------------------------------------------------------

def test_resumed_run_equals_uninterrupted_run(data, tmp_path):
    run(cfg(data, tmp_path / "a", steps=4))
    run(cfg(data, tmp_path / "b", steps=2))
    s = run(cfg(data, tmp_path / "b", steps=4), resume=True)
    assert s["step"] == 4
    assert same(tensors(tmp_path / "a/last.safetensors"), tensors(tmp_path / "b/last.safetensors"))
    assert steps_logged(tmp_path / "b") == [1, 2, 3, 4]
    resolved = json.loads((tmp_path / "b/config.json").read_text())
    assert resolved["batch"] == 4 and resolved["lr_patch"] == {"2": 12}


def test_multiscale_interp_ema_validation_and_best(data, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(natural_image(48, 48, seed=9)).save(val / "v.png")
    s = run(cfg(data, tmp_path / "m", scale="multi", init="interp", hr_patch=24, val=[str(val)], val_every=2,
                loss="l1", schedule="cosine", warmup=1, ema=0.9))
    assert s["best_val"] > 20
    ck = W.load(tmp_path / "m/best.safetensors")
    assert ck.scales == (2, 3, 4)
    prov = ck.metadata["provenance"]
    assert prov["recipe"]["init"] == "interp" and prov["steps"] in (2, 4) and prov["weights"] in ("raw", "ema")
    log = [json.loads(ln) for ln in (tmp_path / "m/metrics.jsonl").read_text().splitlines()]
    assert {r["scale"] for r in log} <= {2, 3, 4} and "val" in log[1] and "val_ema" in log[1]
    best = max(max(r["val"]["mean"], r["val_ema"]["mean"]) for r in log if "val" in r)
    assert prov["best_val_psnr"] == pytest.approx(best, abs=1e-3)
    ema, raw = tensors(tmp_path / "m/ema.safetensors"), tensors(tmp_path / "m/last.safetensors")
    assert not same(ema, raw)


def test_real_degradation_from_our_weights_resumes_exactly(data, tmp_path):
    kw = dict(scale="multi", hr_patch=24, degradation="real", init_weights="lesrcnn-s", lr=1e-4)
    run(cfg(data, tmp_path / "a", **kw))
    run(cfg(data, tmp_path / "b", steps=2, **kw))
    run(cfg(data, tmp_path / "b", **kw), resume=True)
    a = tensors(tmp_path / "a/last.safetensors")
    assert same(a, tensors(tmp_path / "b/last.safetensors"))
    start = W.load("lesrcnn-s").model.state_dict()
    assert 0 < max((a[k] - start[k]).abs().max().item() for k in a) < 0.05  # moved, from the shipped weights


def test_official_checkpoints_are_refused_as_a_starting_point(data, tmp_path):
    fake = tmp_path / "lesrcnn_x2.pth"
    torch.save({"module.conv1.weight": torch.zeros(1)}, fake)
    with pytest.raises(LesrcnnError, match="never starts from the official"):
        run(cfg(data, tmp_path / "o", init_weights=str(fake)))
    assert not (tmp_path / "o/last.state.pt").exists()


def test_paper_schedule_halves_every_decay_steps():
    c = Options(lr=1e-4, decay=400_000)
    assert lr_at(c, 0) == 1e-4 and lr_at(c, 399_999) == 1e-4 and lr_at(c, 400_000) == 5e-5
    c = Options(lr=1e-3, schedule="cosine", steps=100, warmup=10)
    assert lr_at(c, 0) == pytest.approx(1e-4) and lr_at(c, 10) == pytest.approx(1e-3) and lr_at(c, 100) < 1e-9


# --- options, config files and bad inputs ------------------------------------------------------------

def test_config_file_and_flags(data, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(f'data = ["{data}"]\nscale = 3\nsteps = 2\nbatch = 2\npatch = 8\nthreads = 1\nema = 0.5\n')
    run_cli("train", "--config", conf, "--out", tmp_path / "r", "--steps", "1", check=True)
    resolved = json.loads((tmp_path / "r/config.json").read_text())
    assert resolved["scale"] == "3" and resolved["steps"] == 1 and resolved["patch"] == 8 and resolved["ema"] == 0.5


@pytest.mark.parametrize("text,contains", [
    ("bogus_key = 1\n", "unknown key"),
    ('data = "/"\n', "data must be a list"),  # issue 13.2: was walked character by character
    ('steps = "three"\n', "steps must be an integer"),
    ('lr = "fast"\n', "lr must be a number"),
    ("steps = 2.5\n", "steps must be an integer"),
    ("compile = 1\n", "compile must be true or false"),
    ('loss = "l3"\n', "loss must be one of"),
    ("data = [1]\n", "data must be a list"),
    ("steps = -1\n", "must be positive"),
    ("ema = 1.5\n", "ema must be in"),
    ('rescale = "0.9,1.5"\n', "rescale takes factors between 0 and 1"),
    ('rescale = "0.9;0.8"\n', "rescale takes factors"),
    ("steps = [", "cannot parse"),
])
def test_config_schema_errors_name_the_key(tmp_path, text, contains):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(LesrcnnError, match=contains):
        load_config(str(conf))


def test_a_config_error_is_one_line_before_anything_is_written(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('data = "/"\n')
    assert_one_line_error(run_cli("train", "--config", conf, "--out", tmp_path / "q"), contains="data must be a list")
    assert not (tmp_path / "q").exists()


def test_every_option_is_a_flag_and_a_key_with_help_and_default():
    r = run_cli("train", "--help", check=True)
    for name, f in Options.__dataclass_fields__.items():
        assert f"--{name.replace('_', '-')}" in r.stdout
    assert "(default: 600000)" in r.stdout and r.stdout.count("(default:") >= len(Options.__dataclass_fields__)
    assert make_options({"scale": 4, "val-every": 5}).scale == "4"


def test_bad_inputs(data, tmp_path):
    def fails(contains, resume=False, **kw):
        with pytest.raises(LesrcnnError, match=contains):
            run(cfg(**(dict(data=data, out=tmp_path / "o", steps=1, batch=2, patch=8) | kw)), resume=resume)

    (tmp_path / "empty").mkdir()
    fails("no images", data=tmp_path / "empty")
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(natural_image(10, 10)).save(small / "a.png")
    fails("smaller than", data=small, patch=16)
    (tmp_path / "afile").write_text("x")
    fails("not writable", out=tmp_path / "afile" / "run")
    run(cfg(data, tmp_path / "x2run", steps=1, batch=2, patch=8))
    fails("cannot resume", out=tmp_path / "x2run", scale="3", resume=True)
    fails("cannot resume", out=tmp_path / "x2run", variant="sn", resume=True)
    fails("--resume", out=tmp_path / "x2run")
    fails("nothing to resume", out=tmp_path / "o3", resume=True)
    fails("fp16 needs a CUDA", precision="fp16", device="cpu")
    fails("unknown variant", variant="nope", out=tmp_path / "o5")
    assert not (tmp_path / "o5").exists()  # checked before anything is written
    r = run_cli("train", "--data", tmp_path / "empty", "--out", tmp_path / "o4")
    assert_one_line_error(r, contains="no images")


def test_a_wrong_val_folder_is_found_before_training(data, tmp_path):
    with pytest.raises(LesrcnnError, match="nothere"):
        run(cfg(data, tmp_path / "v", val=[str(tmp_path / "nothere")]))
    assert not (tmp_path / "v/metrics.jsonl").exists() and not (tmp_path / "v/last.state.pt").exists()


def test_an_error_after_training_steps_saves_them_first(data, tmp_path):
    def log(*a):  # the log sink fails at the third step (a closed pipe, say)
        if str(a[0]).startswith("step 3/"):
            raise BrokenPipeError(32, "Broken pipe")
    with pytest.raises(BrokenPipeError):
        run(cfg(data, tmp_path / "e", steps=10), log=log)
    st = torch.load(tmp_path / "e/last.state.pt", weights_only=True)
    assert st["step"] == 3
    assert W.load(tmp_path / "e/last.safetensors").metadata["provenance"]["steps"] == 3


# --- non-finite losses, checkpoint unit, kill -9, full disk --------------------------------------------

def test_an_exploding_update_is_never_the_kept_checkpoint(data, tmp_path):
    kw = dict(batch=2, patch=8, save_every=1)
    run(cfg(data, tmp_path / "n", steps=2, **kw))
    before = (tmp_path / "n/last.state.pt").read_bytes()
    with pytest.raises(LesrcnnError, match=r"non-finite.*\(step 2\)"):  # names the kept, good checkpoint
        run(cfg(data, tmp_path / "n", steps=20, lr=1e30, **kw), resume=True)
    assert (tmp_path / "n/last.state.pt").read_bytes() == before
    w = tensors(tmp_path / "n/last.safetensors")
    assert max(t.abs().max().item() for t in w.values()) < 10  # not the 1e30 weights of the bad update
    with pytest.raises(LesrcnnError, match="none was kept"):
        run(cfg(data, tmp_path / "m", steps=20, lr=1e30, **kw))
    assert not (tmp_path / "m/last.state.pt").exists()


def test_state_is_one_unit_and_a_stale_weights_file_is_repaired(data, tmp_path):
    run(cfg(data, tmp_path / "a", steps=6))
    run(cfg(data, tmp_path / "b", steps=2))
    stale = (tmp_path / "b/last.safetensors").read_bytes()
    run(cfg(data, tmp_path / "b", steps=4), resume=True)
    (tmp_path / "b/last.safetensors").write_bytes(stale)  # killed after the state, before the weights file
    with open(tmp_path / "b/metrics.jsonl", "a") as f:  # logged after the last checkpoint, then killed
        f.write('{"step": 5, "loss": 1}\n{"step": 6, "lo')
    run(cfg(data, tmp_path / "b", steps=6), resume=True)
    assert same(tensors(tmp_path / "a/last.safetensors"), tensors(tmp_path / "b/last.safetensors"))
    assert steps_logged(tmp_path / "b") == [1, 2, 3, 4, 5, 6]


def test_a_state_without_its_weights_is_refused_with_one_line(data, tmp_path):
    run(cfg(data, tmp_path / "b", steps=2, save_every=1))
    st = torch.load(tmp_path / "b/last.state.pt", weights_only=True)
    legacy = {k: v for k, v in st.items() if k not in ("model", "mean", "ema", "format")}
    torch.save(legacy, tmp_path / "b/last.state.pt")  # the older format: the weights in last.safetensors
    before = (tmp_path / "b/last.state.pt").read_bytes()
    r = run_cli("train", "--data", data, "--out", tmp_path / "b", "--steps", "4", "--batch", "4", "--patch", "12",
                "--resume")
    assert_one_line_error(r, contains="unreadable training state (KeyError); start a new run with --init-weights")
    assert (tmp_path / "b/last.state.pt").read_bytes() == before  # left as it was


def test_kill_9_at_any_moment_then_resume(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    out = tmp_path / "k"
    args = [sys.executable, "-m", "lesrcnn", "train", "--data", str(data), "--out", str(out), "--batch", "2",
            "--patch", "8", "--threads", "1", "--save-every", "1", "--log-every", "1"]
    p = subprocess.Popen(args + ["--steps", "100000"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or len(steps_logged(out)) < 4:
        time.sleep(0.05)
        assert time.time() < deadline
    time.sleep(np.random.default_rng().uniform(0, 0.3))
    p.kill()
    p.wait()
    (out / f".last.state.pt{TEMP_MARK}0badf00d").write_bytes(b"cut")  # as a kill during a write leaves it
    st = torch.load(out / "last.state.pt", weights_only=True)
    r = subprocess.run(args + ["--steps", str(st["step"] + 2), "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    log = steps_logged(out)
    assert log == sorted(set(log)) and log[-1] == st["step"] + 2
    assert W.load(out / "last.safetensors").metadata["provenance"]["steps"] == st["step"] + 2
    assert not [f for f in os.listdir(out) if TEMP_MARK in f]


def test_a_full_disk_is_one_line_naming_the_checkpoint(data, tmp_path):
    def small_files():  # every write past 256 KiB fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "lesrcnn", "train", "--data", str(data), "--out", str(tmp_path / "f"),
                        "--steps", "2", "--batch", "2", "--patch", "8", "--threads", "1"], env=env,
                       capture_output=True, text=True, preexec_fn=small_files)
    assert_one_line_error(r, contains="cannot write")
    assert "last.state.pt" in r.stderr and "enforce fail" not in r.stderr
    assert not [f for f in os.listdir(tmp_path / "f") if TEMP_MARK in f]


def test_sigint_saves_and_exits_cleanly(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-m", "lesrcnn", "train", "--data", str(data), "--out", str(out),
                          "--steps", "100000", "--batch", "2", "--patch", "8", "--threads", "1",
                          "--save-every", "100000", "--log-every", "1"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or len(steps_logged(out)) < 2:
        time.sleep(0.2)
        assert time.time() < deadline
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "Traceback" not in err and '"reason": "signal' in err
    assert "steps/s" in err and "ETA" in err  # stderr is not a terminal: log lines, not a silent run
    st = torch.load(out / "last.state.pt", weights_only=True)
    assert st["step"] >= 2
    assert W.load(out / "last.safetensors").metadata["provenance"]["steps"] == st["step"]


# --- DDP and the GPU script on the CPU ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_the_combined_batch(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    args = ["train", "--data", str(data), "--steps", "2", "--batch", "4", "--patch", "12", "--threads", "1",
            "--seed", "5", "--scale", "multi", "--hr-patch", "24", "--ema", "0.9"]
    single = subprocess.run([sys.executable, "-m", "lesrcnn", *args, "--out", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "lesrcnn", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for name in ("last", "ema"):
        a, b = tensors(tmp_path / f"one/{name}.safetensors"), tensors(tmp_path / f"two/{name}.safetensors")
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff < 1e-5, (name, diff)
    assert W.load(tmp_path / "two/last.safetensors").metadata["provenance"]["hardware"].endswith("x2")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_scripts_run_on_the_cpu(data, tmp_path):
    """tools/gpu_jobs.sh: both jobs of tools/gpu_train.sh side by side, as a device call runs them."""
    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(natural_image(48, 48, seed=9)).save(val / "v.png")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(REPO / "tools/gpu_jobs.sh"), "--device", "cpu", "--minutes", "0.15",
                        "--data", str(data), "--batch", "4", "--hr-patch", "24", "--val", str(val),
                        "--real-batch", "2", "--loss", "mse", "--rescale", "0.8"],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    assert len(list(out.iterdir())) == 8  # the device tool brings back at most 8 files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["step"] >= 1 and summary["train"]["reason"] == "time limit"
    ck = W.load(out / "lesrcnn_s.safetensors")
    bic = ck.metadata["provenance"]["recipe"]
    assert ck.scales == (2, 3, 4) and bic["ema"] > 0 and (bic["loss"], bic["batch"], bic["rescale"]) == ("mse", 4, "0.8")
    assert "rescaled copies" in (out / "train.log").read_text()
    assert (out / "metrics.jsonl").exists() and "val" in summary
    real = W.load(out / "real_last.safetensors").metadata["provenance"]["recipe"]
    assert real["degradation"] == "real" and real["init_weights"].endswith("lesrcnn_s_real.safetensors")
    assert (real["loss"], real["batch"], real["hr_patch"], real["rescale"]) == ("l1", 2, 24, "")  # the bicubic job's
