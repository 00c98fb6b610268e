"""The command line as users type it: one registry, help with defaults, the aliases of the
Real-ESRGAN and ncnn upscalers, rounding by default, errors that point to the right help."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error, natural_image, run_main
from lesrcnn import cli


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")


def test_help_lists_every_command_without_importing_any():
    code = ("import sys; from lesrcnn.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'PIL', 'lesrcnn.upscale_cli', 'lesrcnn.train') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    for name in cli.COMMANDS:
        assert f"    {name} " in r.stdout, (name, r.stdout)
    assert "HEAVY []" in r.stdout


def test_a_broken_or_missing_module_never_hides_its_command():
    """An ImportError inside the package used to drop the subcommand silently (`_optional`)."""
    code = ("import sys; sys.modules['lesrcnn.export'] = None; sys.modules['onnx'] = None\n"
            "from lesrcnn.cli import main\n"
            "print('RC', main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, env=_env())
    assert "    export " in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-c", code, "export", "-o", "x.onnx"], capture_output=True, text=True,
                       env=_env())
    assert "RC 2" in r.stdout
    assert_one_line_error(subprocess.CompletedProcess([], 2, "", r.stderr), 2, "lesrcnn export")


def test_a_missing_optional_extra_is_one_line_naming_it(capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `pip install lesrcnn[serve]` had not been run
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    try:
        r = run_main(capfd, "serve", "--port", "0")
    except Exception as e:  # pragma: no cover - shown as the failure
        pytest.fail(f"raised {e!r}")
    assert_one_line_error(r, 2, "lesrcnn[serve]")


def _all_parsers():
    for name in cli.COMMANDS:
        try:
            parser = cli.build_parser(name)
        except ModuleNotFoundError as e:  # an optional extra this machine lacks
            pytest.skip(f"{name}: {e}")
        yield name, parser.get_default("commands").choices[name]


def test_every_option_of_every_command_has_help_showing_its_default():
    missing = []
    for name, p in _all_parsers():
        fmt = p._get_formatter()
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flag = "/".join(action.option_strings) or action.dest
            if not action.help:
                missing.append(f"{name} {flag}: no help")
                continue
            text = fmt._get_help_string(action) % {**vars(action), "prog": p.prog}
            shown = action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS)
            if not shown and action.option_strings and "default" not in text.lower():
                missing.append(f"{name} {flag}: default {action.default!r} not shown")
    assert not missing, "\n".join(missing)
    helptext = subprocess.run([sys.executable, "-m", "lesrcnn", "upscale", "--help"], capture_output=True,
                              text=True, env=_env()).stdout
    assert "-t N, --tile N" in helptext and "-x, --self-ensemble" in helptext and "--fp32" in helptext
    assert "(default: 2)" in " ".join(helptext.split())  # --scale


def test_unknown_flags_point_to_the_commands_own_help(capfd):
    for name, args in (("upscale", ["a.png", "-o", "b.png"]), ("eval", ["--data", "d"]), ("info", []),
                       ("convert", ["a.pth", "-o", "b.safetensors"])):
        r = run_main(capfd, name, *args, "--no-such-flag")
        assert_one_line_error(r, 2, f"see `lesrcnn {name} --help`")
        assert "--no-such-flag" in r.stderr


@pytest.fixture
def img(tmp_path):
    return _save(tmp_path / "a.png", natural_image(14, 11, seed=3))


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_real_esrgan_and_ncnn_aliases(img, tmp_path, capfd):
    r = run_main(capfd, "upscale", "-i", img, "-o", tmp_path / "o.png", "-s", "3", "-t", "16", "-x", "-f", "png",
                 "-j", "1:1:1", "-g", "-1", "--fp32", "-q")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "o.png").size == (33, 42)
    r = run_main(capfd, "upscale", "-i", img, "-o", tmp_path / "d", "--ext", "webp", "-g", "cpu", "-j", "1", "-q")
    assert r.returncode == 0 and Image.open(tmp_path / "d" / "a.webp").format == "WEBP", r.stderr
    assert_one_line_error(run_main(capfd, "upscale", "-i", img, "-o", tmp_path / "e.png", "-g", "gpu0"), 2,
                          "device")


def test_upscale_rounds_by_default_and_truncates_on_request(img, tmp_path, capfd):
    from lesrcnn.upscale import Upscaler

    lr = np.asarray(Image.open(img))
    got = {}
    for q in (None, "truncate"):
        out = tmp_path / f"{q}.png"
        r = run_main(capfd, "upscale", img, "-o", out, "-q", *(["--quantize", q] if q else []))
        assert r.returncode == 0, r.stderr
        got[q] = np.asarray(Image.open(out))
    assert np.array_equal(got[None], Upscaler(2, quantize="round", backend="torch").upscale_array(lr))
    assert np.array_equal(got["truncate"], Upscaler(2, quantize="truncate", backend="torch").upscale_array(lr))
    assert not np.array_equal(got[None], got["truncate"])


def test_eval_bicubic_honours_quantize(tmp_path, capfd):
    d = tmp_path / "Set"
    for i in range(2):
        _save(d / f"h{i}.png", natural_image(40, 44, seed=i))
    rows = {}
    for q in (None, "round", "truncate"):
        r = run_main(capfd, "eval", "--bicubic", "--data", d, "-s", "3", "--format", "json",
                     *(["--quantize", q] if q else []))
        assert r.returncode == 0, r.stderr
        rows[q] = json.loads(r.stdout)[0]
    assert rows[None] == rows["round"] and rows["round"]["quantize"] == "round"
    assert rows["truncate"]["quantize"] == "truncate" and rows["truncate"]["psnr"] < rows["round"]["psnr"]


def test_an_output_name_with_a_non_image_extension_is_an_error_not_a_folder(img, tmp_path, capfd):
    for out in ("out.gif", "out.jp2", "out.heic"):
        assert_one_line_error(run_main(capfd, "upscale", img, "-o", tmp_path / out), 2, "cannot write")
        assert_one_line_error(run_main(capfd, "upscale", img.parent, "-o", tmp_path / out), 2, "cannot write")
        assert not (tmp_path / out).exists()
    r = run_main(capfd, "upscale", img, "-o", tmp_path / "results.v2", "-q")  # not an image extension: a folder
    assert r.returncode == 0 and (tmp_path / "results.v2" / "a.png").is_file(), r.stderr


def test_a_single_image_says_what_it_starts(img, tmp_path, capfd):
    r = run_main(capfd, "upscale", img, "-o", tmp_path / "o.png")
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("lesrcnn: upscaling") and "11x14 -> 22x28" in first, r.stderr


def test_info_is_an_aligned_summary_and_json_on_request(capfd):
    r = run_main(capfd, "info")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) < 110, max(lines, key=len)
    top = [ln for ln in lines if not ln.startswith(" ")]
    values = {ln.split()[0]: ln for ln in top if len(ln.split()) > 1}
    column = {ln.index(ln.split()[1], len(ln.split()[0])) for ln in values.values()}
    assert len(column) == 1, values  # every value starts in one column
    assert "x2, x3, x4" in values["scales"] and "1,254,080" in values["parameters"]
    assert any("Set5_x2" in ln for ln in lines)  # the measured results, as a table
    d = json.loads(run_main(capfd, "info", "--json").stdout)
    assert d["scales"] == [2, 3, 4] and d["metadata"]["provenance"]["measured"]


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """The handler turns SIGTERM into an exception, so `with` blocks (temp files) unwind."""
    code = ("import os, signal, time; from lesrcnn.errors import sigterm_as_interrupt\n"
            "try:\n    with sigterm_as_interrupt():\n        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(5)\nexcept KeyboardInterrupt as e:\n    print('CAUGHT', type(e).__name__)\n"
            "print('RESTORED', signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert "CAUGHT Terminated" in r.stdout and "RESTORED True" in r.stdout, (r.stdout, r.stderr)


def test_quoted_globs_match_as_the_shell_would(tmp_path, monkeypatch):
    """Our walker replaces glob.glob (which follows symlink loops): same matches as glob on a tree
    without loops."""
    import glob

    from lesrcnn.upscale_cli import input_files

    for rel in ("a.png", "b.jpg", "ab.png", ".hidden.png", "sub/c.png", "sub/deep/d.png", "sub/deep/e.PNG",
                "other/f.png", "x[1].png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    for pattern in ("*.png", "**/*.png", "sub/**/*.png", "sub/*/*.png", "[ab]*.png", "[!a]*", "?.png", "*/c.png",
                    "**/d.png", "sub/**", str(tmp_path / "**" / "*.jpg"), "x[[]1].png"):
        want = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        got = sorted(str(p) for p in input_files(pattern)[1])
        assert got == want, pattern
