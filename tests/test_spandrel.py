"""spandrel: the real ``spandrel.ModelLoader().load_from_file`` on our files and the authors' layout.

spandrel imports torchvision, which cannot load beside this environment's CPU torch, so the
spandrel side runs in its own virtual environment (torch + torchvision + spandrel, made by
.ci/run) whose python is ``$LESRCNN_SPANDREL_PYTHON``. The reference outputs are computed here,
with lesrcnn's own ``Upscaler``; the two sides exchange files.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED, natural_image, official_layout

from lesrcnn import weights as W
from lesrcnn.integrations import spandrel as ls
from lesrcnn.upscale import Upscaler


def _spandrel_python() -> str | None:
    env = os.environ.get("LESRCNN_SPANDREL_PYTHON")
    known = ["/tmp/lesrcnn-spandrel-venv/bin/python", str(REPO / ".venv-spandrel/bin/python")]
    for cand in ([env] if env else []) + known:
        if cand and Path(cand).is_file():
            return cand
    return None


PY = _spandrel_python()
pytestmark = pytest.mark.skipif(PY is None, reason="no spandrel environment: set LESRCNN_SPANDREL_PYTHON to a python "
                                                   "with torch, torchvision and spandrel (.ci/run makes one)")

# Runs in the spandrel environment: load every file with spandrel, run it, write outputs + facts.
CHECK = r'''
import json, sys
import numpy as np, torch, spandrel
import lesrcnn
from spandrel import MAIN_REGISTRY, ModelLoader, ModelTiling
torch.set_num_threads(1)
work = sys.argv[1]
job = json.load(open(f"{work}/job.json"))
facts = {"registered_by_import": "LESRCNN" in MAIN_REGISTRY}
import runpy
ns = runpy.run_path(job["example"])  # the ComfyUI custom-node file registers LESRCNN
facts["example_registers"] = "LESRCNN" in MAIN_REGISTRY and ns["NODE_CLASS_MAPPINGS"] == {}
from lesrcnn.integrations import spandrel as ls
facts["second_install"] = len(ls.install())
x = torch.from_numpy(np.load(f"{work}/x.npy"))
for name, path in job["files"].items():
    d = ModelLoader().load_from_file(path)
    facts[name] = {"type": type(d).__name__, "arch": d.architecture.id, "purpose": d.purpose, "scale": d.scale,
                   "in": d.input_channels, "out": d.output_channels, "tiling": d.tiling.name,
                   "half": d.supports_half, "bf16": d.supports_bfloat16, "size_none": d.size_requirements.none,
                   "tags": d.tags}
    np.save(f"{work}/{name}.npy", d(x).numpy())
    facts[name]["bf16_err"] = float((d.bfloat16()(x.bfloat16()).float() - d.float()(x)).abs().max())
    facts[name]["fp16_err"] = float((d.half()(x.half()).float() - d.float()(x)).abs().max())
try:
    ModelLoader().load_from_state_dict({"head.weight": torch.zeros(64, 3, 3, 3)})
    facts["junk"] = "loaded"
except spandrel.UnsupportedModelError:
    facts["junk"] = "unsupported"
json.dump(facts, open(f"{work}/facts.json", "w"))
'''


@pytest.fixture(scope="module")
def spandrel_run(tmp_path_factory):
    """Write the checkpoints and the input, run spandrel on them once; (work dir, facts, refs)."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("spandrel")
    files: dict[str, str] = {"multi": str(W.embedded_path(W.DEFAULT_WEIGHTS))}
    refs: dict[str, tuple[int, str]] = {"multi": (2, W.DEFAULT_WEIGHTS)}
    split = ls.split(W.DEFAULT_WEIGHTS, work / "split")
    files["single_x3"], refs["single_x3"] = str(split[1]), (3, str(split[1]))
    x4 = W.load(str(split[2])).model
    torch.save(official_layout(x4), work / "authors_layout_x4.pth")
    files["authors_layout_x4"], refs["authors_layout_x4"] = str(work / "authors_layout_x4.pth"), (4, str(split[2]))
    torch.save(official_layout(W.load(None).model, multi=True), work / "authors_multi.pth")
    files["authors_multi"], refs["authors_multi"] = str(work / "authors_multi.pth"), (2, W.DEFAULT_WEIGHTS)
    if SHARED is not None and (SHARED / "weights/official/lesrcnn_x3.pth").is_file():
        p = str(SHARED / "weights/official/lesrcnn_x3.pth")
        files["official_x3"], refs["official_x3"] = p, (3, p)
    img = natural_image(13, 11, seed=5)
    np.save(work / "x.npy", (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255).numpy())
    example = REPO / "examples" / "comfyui_lesrcnn.py"
    (work / "job.json").write_text(json.dumps({"files": files, "example": str(example)}))
    (work / "check.py").write_text(CHECK)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    r = subprocess.run([PY, str(work / "check.py"), str(work)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    facts = json.loads((work / "facts.json").read_text())
    return work, facts, refs, img


def test_registration_is_explicit_and_idempotent(spandrel_run):
    _, facts, _, _ = spandrel_run
    assert facts["registered_by_import"] is False  # `import lesrcnn` leaves spandrel alone
    assert facts["example_registers"] is True and facts["second_install"] == 0
    assert facts["junk"] == "unsupported"  # a stray `head.weight` is not taken for LESRCNN


@pytest.mark.parametrize("name,scale", [("multi", 2), ("single_x3", 3), ("authors_layout_x4", 4),
                                        ("authors_multi", 2), ("official_x3", 3)])
def test_descriptor_and_output_equal_ours(spandrel_run, name, scale):
    work, facts, refs, img = spandrel_run
    if name not in facts:
        pytest.skip("the authors' checkpoints are in ../shared, which is absent")
    f = facts[name]
    assert (f["type"], f["arch"], f["purpose"], f["scale"]) == ("ImageModelDescriptor", "LESRCNN", "SR", scale)
    facts = (f["in"], f["out"], f["tiling"], f["half"], f["bf16"], f["size_none"])
    assert facts == (3, 3, "SUPPORTED", True, True, True)
    assert f["bf16_err"] < 0.08 and f["fp16_err"] < 0.01, f  # reduced precision runs and stays close
    got = np.load(work / f"{name}.npy")[0].transpose(1, 2, 0)
    ref_scale, weights = refs[name]
    ours = Upscaler(ref_scale, weights, "cpu", tile=0).upscale_array(img.astype(np.float32) / 255)
    assert got.shape == ours.shape == (13 * scale, 11 * scale, 3)
    assert float(np.abs(got - ours).max()) < 1e-4


def test_split_writes_one_file_per_scale(spandrel_run):
    work, facts, _, _ = spandrel_run
    names = sorted(p.name for p in (work / "split").iterdir())
    assert names == ["lesrcnn_s_x2.safetensors", "lesrcnn_s_x3.safetensors", "lesrcnn_s_x4.safetensors"]
    assert W.load(str(work / "split" / names[2])).scales == (4,)
