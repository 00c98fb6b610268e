"""ONNX export (issue 4): equivalence with PyTorch, dynamic sizes, every scale and variant, the CLI,
the runner used by ``upscale --backend onnx``, fp16 and INT8."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from lesrcnn import backends as BK  # noqa: E402
from lesrcnn import export as E  # noqa: E402
from lesrcnn import weights as W  # noqa: E402
from lesrcnn.errors import LesrcnnError  # noqa: E402
from lesrcnn.model import VARIANTS, build, init_interpolation  # noqa: E402

from conftest import SHARED, assert_one_line_error, natural_image, needs_shared, official, run_cli  # noqa: E402


def interp(scale, variant="full", seed=0):
    return init_interpolation(build(scale, variant), seed=seed).eval()


def ort(proto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output for ``x`` (the runner of ``--backend onnx``)."""
    return BK.ort_runner(proto.SerializeToString())(x)


def scale_of(proto) -> str:
    """The scale an exported file declares (``upscale`` reads it to refuse another scale)."""
    return {p.key: p.value for p in proto.metadata_props}["scale"]


def img(h, w, seed=0):
    return np.ascontiguousarray(natural_image(h, w, seed).transpose(2, 0, 1)[None], dtype=np.float32) / 255


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_export_matches_pytorch_and_checks(scale):
    m = interp(scale)
    proto = E.to_onnx(m, scale)
    onnx.checker.check_model(proto, full_check=True)
    assert scale_of(proto) == str(scale)
    assert E.verify(proto, m, scale) < E.VERIFY_TOL
    run = BK.ort_runner(proto.SerializeToString())
    for h, w in ((20, 31), (33, 17)):  # dynamic height and width
        x = img(h, w, seed=h)
        y = run(x)
        assert y.shape == (1, 3, h * scale, w * scale)
        assert np.abs(y - E.torch_reference(m, x, scale)).max() < E.VERIFY_TOL


def test_multiscale_model_exports_one_graph_per_scale():
    m = init_interpolation(build("multi"), seed=1).eval()
    x = img(19, 23)
    outs = {}
    for s in (2, 3, 4):
        proto = E.to_onnx(m, s)
        assert scale_of(proto) == str(s)
        outs[s] = ort(proto, x)
        assert np.abs(outs[s] - E.torch_reference(m, x, s)).max() < E.VERIFY_TOL
    assert {o.shape for o in outs.values()} == {(1, 3, 19 * s, 23 * s) for s in (2, 3, 4)}


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "full"])
def test_ablation_variants_export(variant):
    torch.manual_seed(3)
    m = build(2, variant).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.05)
    assert E.verify(E.to_onnx(m, 2), m, 2) < E.VERIFY_TOL


def test_batch_and_opset_and_fp16():
    m = interp(2)
    proto = E.to_onnx(m, 2, opset=13)
    assert proto.opset_import[0].version == 13
    x = np.concatenate([img(12, 14, 1), img(12, 14, 2)])
    y = ort(proto, x)
    assert np.abs(y - E.torch_reference(m, x, 2)).max() < E.VERIFY_TOL
    with pytest.raises(LesrcnnError, match="opset"):
        E.to_onnx(m, 2, opset=9)
    with pytest.raises(LesrcnnError, match="scale 3"):
        E.to_onnx(m, 3)
    half = E.to_onnx(m, 2, fp16=True)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 interface
    assert E.verify(half, m, 2) < E.VERIFY_TOL_FP16


def test_graph_is_the_fused_module_export():
    proto = E.to_onnx(interp(4), 4)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 + 16 + 2 + 4 + 1  # one upsampler pass (x4: two stages): the fused RB
    assert sum(n.op_type == "DepthToSpace" for n in proto.graph.node) == 2
    # the INT8 recipe picks convolutions by module name
    assert [n.name for n in convs if "/head" in n.name or "/tail" in n.name] == [convs[0].name, convs[-1].name]


def test_engines_from_model_and_file_are_cached_by_content(tmp_path):
    m = interp(3)
    x = torch.from_numpy(img(16, 21))
    ref = E.torch_reference(m, x.numpy(), 3)
    eng = BK.create(m, "onnx", scales=(3,))
    assert np.abs(eng(x, 3).numpy() - ref).max() < E.VERIFY_TOL
    key = next(k for k in BK._RUNNERS if k[0] == "onnx" and k[2] == 3)
    # a new model with other weights (same architecture, maybe the same id) never reuses the old session
    m2 = interp(3, seed=5)
    with torch.no_grad():
        m2.tail.weight.mul_(0.5)
    out2 = BK.create(m2, "onnx", scales=(3,))(x, 3).numpy()
    assert np.abs(out2 - E.torch_reference(m2, x.numpy(), 3)).max() < E.VERIFY_TOL
    assert np.abs(out2 - ref).max() > 1e-3 and key in BK._RUNNERS
    path = tmp_path / "m.onnx"
    path.write_bytes(E.to_onnx(m, 3).SerializeToString())
    run2 = BK.create(None, "onnx", onnx_file=path, scales=(3,))
    assert run2.scales == (3,) and np.abs(run2(x, 3).numpy() - ref).max() < E.VERIFY_TOL
    with pytest.raises(LesrcnnError, match="scale"):
        run2(x, 2)
    with pytest.raises(LesrcnnError, match="N x 3"):
        eng(x[0], 3)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(LesrcnnError):
        BK.create(None, "onnx", onnx_file=tmp_path / "bad.onnx")
    with pytest.raises(LesrcnnError, match="not found"):
        BK.create(None, "onnx", onnx_file=tmp_path / "missing.onnx")


def test_export_cli(tmp_path):
    ckpt = W.save(init_interpolation(build("multi"), seed=0), tmp_path / "multi.safetensors")
    out = tmp_path / "m.onnx"
    r = run_cli("export", "--weights", ckpt, "--scale", "3", "--format", "onnx", "-o", out, check=True)
    assert "max |ORT - PyTorch|" in r.stdout and out.is_file()
    assert scale_of(onnx.load(str(out))) == "3"
    assert_one_line_error(run_cli("export", "--weights", ckpt, "--scale", "3", "-o", out), contains="exists")
    r = run_cli("export", "--weights", ckpt, "-o", tmp_path / "all.onnx", check=True)  # every scale, one file each
    for s in (2, 3, 4):
        assert scale_of(onnx.load(str(tmp_path / f"all_x{s}.onnx"))) == str(s)
    assert_one_line_error(run_cli("export", "--weights", ckpt, "-o", tmp_path / "q.onnx", "--int8", "--fp16"),
                          contains="--fp16")
    assert_one_line_error(run_cli("export", "--weights", tmp_path / "none.pth", "-o", tmp_path / "q.onnx"),
                          contains="not found")
    assert_one_line_error(run_cli("export", "--weights", ckpt, "-o", tmp_path / "q.onnx", "--opset", "7"),
                          contains="opset")


def test_equalisation_is_exact_in_fp32():
    for s in (2, 4):
        torch.manual_seed(s)
        m = build(s).eval()
        for p in m.parameters():
            p.data.normal_(0, 0.05)
        eq = E.equalize(m, E.synthetic_patches(3, 24), s)
        assert not torch.allclose(eq.irb[1].weight, m.irb[1].weight)
        x = img(17, 15)
        ref = E.torch_reference(m, x, s)
        assert np.abs(E.torch_reference(eq, x, s) - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())


def test_int8_recipe_structure_and_error():
    m = interp(2)
    q = E.int8_model(m, 2, E.synthetic_patches(8, 32))
    ops = {n.op_type for n in q.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    deq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    ieeb = [n.name for n in convs if "/body3" in n.name or "/body1" in n.name]
    assert ieeb and [n.name for n in convs if n.input[1] in deq] == ieeb  # INT8 weights: the IEEB's alone
    onnx.checker.check_model(q)
    x = img(24, 24, seed=5)
    y = ort(q, x)
    ref = E.torch_reference(m, x, 2)
    assert y.shape == ref.shape
    assert np.abs(np.clip(y, 0, 1) - np.clip(ref, 0, 1)).mean() < 2 / 255
    props = {p.key: p.value for p in q.metadata_props}
    assert props["precision"] == "int8" and props["scale"] == "2" and E.INT8_RECIPE in props["quantization"]


def test_int8_cli_writes_the_model_that_precision_int8_runs(tmp_path):
    """One recipe: ``export --int8`` writes what ``--precision int8`` runs (embedded weights: the shipped model)."""
    out = tmp_path / "q.onnx"
    r = run_cli("export", "-s", "2", "-o", out, "--int8", check=True)
    assert "INT8" in r.stdout and "/255" in r.stdout
    assert out.read_bytes() == BK.int8_onnx(W.load(None).model, 2, progress=False)
    assert_one_line_error(run_cli("export", "-s", "2", "-o", tmp_path / "r.onnx", "--int8", "--opset", "13"),
                          contains="opset")


@needs_shared
def test_int8_psnr_on_a_set5_image_within_bound():
    """Official x2 weights, the INT8 recipe (built-in calibration set); the smallest Set5 image.
    (The whole Set5/Set14 table at every scale: benchmarks/int8_psnr.py.)"""
    from lesrcnn.data import find_dataset, load_pair
    from lesrcnn.metrics import psnr_y, to_uint8

    ck = W.load(official(2))
    q = E.int8_model(ck.model, 2)
    ds = find_dataset(SHARED / "data" / "benchmarks" / "Set5", 2)
    pair = min(ds.pairs, key=lambda p: p.hr.stat().st_size)  # the smallest image, for speed
    hr, lr = load_pair(pair, 2)
    x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)
    p32 = psnr_y(to_uint8(ort(E.to_onnx(ck.model, 2), x)[0].transpose(1, 2, 0)), hr, 2)
    p8 = psnr_y(to_uint8(ort(q, x)[0].transpose(1, 2, 0)), hr, 2)
    assert p32 - p8 <= 0.10, (p32, p8)
    assert p8 > 30
