"""Shared fixtures: where ../shared is (data the project must never commit), and small real images."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    env = os.environ.get("LESRCNN_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "../shared"]:
        if (cand / "data" / "benchmarks").is_dir():
            return cand.resolve()
    return None


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: takes more than 20 s on 2 CPU cores (CI still runs it)")


SHARED = shared_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared (benchmarks, official checkpoints) not found; "
                                                         "set LESRCNN_SHARED to run these")


@pytest.fixture(scope="session")
def shared() -> Path:
    if SHARED is None:
        pytest.skip("../shared not found; set LESRCNN_SHARED")
    return SHARED


def official(scale: int) -> Path:
    if SHARED is None:
        pytest.skip("../shared not found")
    p = SHARED / "weights" / "official" / f"lesrcnn_x{scale}.pth"
    if not p.exists():
        pytest.skip(f"{p} missing")
    return p


def run_cli(*args: str, check: bool = False, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "lesrcnn", *map(str, args)], capture_output=True, text=True, env=env,
                       **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"lesrcnn {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def assert_one_line_error(r: subprocess.CompletedProcess, code: int = 2, contains: str | None = None) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip().startswith("lesrcnn: error")]
    assert len(lines) == 1, r.stderr
    if contains:
        assert contains.lower() in lines[0].lower(), lines[0]


def natural_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-with-edges synthetic RGB uint8 image (not noise: SR nets behave on it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy = rng.uniform(0.02, 0.15, 2)
        img[..., c] = 0.5 + 0.3 * np.sin(fx * x + c) * np.cos(fy * y - c)
    img[(x // 17 + y // 13) % 2 == 0] *= 0.7
    return np.clip(img * 255 + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def run_main(capfd, *args) -> subprocess.CompletedProcess:
    """The real CLI entry point in this process (torch imported once: fast for large corpora);
    returns what run_cli returns. Signal handlers the CLI installs are restored afterwards."""
    import signal

    from lesrcnn.cli import main

    capfd.readouterr()
    old = signal.getsignal(signal.SIGTERM)
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help, usage errors
        code = e.code
    finally:
        signal.signal(signal.SIGTERM, old)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def sha256_tree(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (symlinks recorded, not followed): inputs before/after."""
    import hashlib

    out = {}
    for root in paths:
        items = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for p in items:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def official_layout(model, multi: bool = False) -> dict[str, torch.Tensor]:
    """Our state dict in the authors' key layout (the inverse of weights.official_to_ours)."""
    import torch

    sd = model.state_dict()
    mean = model.mean.flatten()
    eye = torch.eye(3).view(3, 3, 1, 1)
    out = {"sub_mean.shifter.weight": eye, "sub_mean.shifter.bias": -mean,
           "add_mean.shifter.weight": eye, "add_mean.shifter.bias": mean.clone(), "conv1.0.weight": sd["head.weight"]}
    for k in range(8):
        out[f"conv{2 + 2 * k}.0.weight"] = sd[f"body3.{k}.weight"]
        out[f"conv{3 + 2 * k}.0.weight"] = sd[f"body1.{k}.weight"]
    for i in range(4):
        out[f"conv17_{i + 1}.0.weight"] = sd[f"irb.{i}.weight"]
    out["conv18.0.weight"] = sd["tail.weight"]
    for k, v in sd.items():
        if k.startswith("upsample."):
            _, xs, j, kind = k.split(".")
            out[f"upsample.up{xs[1:] if multi else ''}.body.{j}.{kind}"] = v
    return {k: v.clone().contiguous() for k, v in out.items()}
