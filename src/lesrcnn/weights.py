"""Checkpoints: the authors' legacy ``.pth`` files, our safetensors format, the embedded weights.

Loading returns a :class:`Checkpoint` (model, scales, variant, mean, metadata), in the spirit of
spandrel, so callers never guess what a file holds. Whatever a file holds, damaged or hostile, it
is refused with one LesrcnnError naming it, and no code in it runs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .errors import LesrcnnError, first_line, one_line
from .model import DIV2K_MEAN, LESRCNN, SCALES, VARIANTS

FORMAT = "lesrcnn"
FORMAT_VERSION = "1"

# Weights that ship inside the package, trained by this project's own code (see README):
# lesrcnn-s from scratch by `lesrcnn train` on T91+BSD200; real: lesrcnn-s fine-tuned with
# `--degradation real` (JPEG, noise, blur) for real photos.
PRETRAINED: dict[str, dict] = {
    "lesrcnn-s": {"file": "lesrcnn_s.safetensors", "scales": (2, 3, 4),
                  "sha256": "61418cb88c89f8b5b3b695c580bf6d9293f58d88717fe1a0f3082c8d110a12f4"},
    "real": {"file": "lesrcnn_s_real.safetensors", "scales": (2, 3, 4),
             "sha256": "408de503a6bac75bb0aec79d0bd1d88de3040866f299b6626d69915022d9e48b"},
}
DEFAULT_WEIGHTS = "lesrcnn-s"


@dataclass
class Checkpoint:
    model: LESRCNN
    scales: tuple[int, ...]
    variant: str
    mean: tuple[float, float, float]
    source: str
    metadata: dict = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def require_scale(self, scale: int) -> None:
        if scale not in self.scales:
            have = "/x".join(map(str, self.scales))
            raise LesrcnnError(f"{self.source} is a x{have} model; it cannot upscale x{scale}")


#: The released upsampler keys: ``upsample.up.body.I`` (LESRCNN x2/x3/x4), ``upsample.upS.body.I`` (LESRCNN-S).
_OFFICIAL_UP = re.compile(r"upsample\.up([234]?)\.body\.(\d)\.(weight|bias)")


def official_to_ours(sd: dict[str, torch.Tensor]) -> tuple[dict, tuple[int, ...], tuple[float, ...]]:
    """Map the released code's keys to ours; returns (state dict, scales, channel mean)."""
    ups = {k: m for k in sd if (m := _OFFICIAL_UP.fullmatch(k))}
    if not any(m[2] == "0" and m[3] == "weight" for m in ups.values()):
        raise LesrcnnError("not an LESRCNN checkpoint: no 'upsample.up.body.0.weight' key")
    single = None
    if "upsample.up.body.0.weight" in sd:  # one scale, told by the upsampler's output channels
        n_up = sd["upsample.up.body.0.weight"].shape[0]
        single = {256: "4" if "upsample.up.body.2.weight" in sd else "2", 576: "3"}.get(n_up)
        if single is None:
            raise LesrcnnError(f"not an LESRCNN checkpoint: upsampler has {n_up} output channels")
    names = {"conv1.0.weight": "head.weight", "conv18.0.weight": "tail.weight"}
    names |= {f"conv{2 * k + 2}.0.weight": f"body3.{k}.weight" for k in range(8)}  # unit k: 3x3 layer
    names |= {f"conv{2 * k + 3}.0.weight": f"body1.{k}.weight" for k in range(8)}  # and 1x1 layer
    names |= {f"conv17_{i + 1}.0.weight": f"irb.{i}.weight" for i in range(4)}
    names |= {k: f"upsample.x{m[1] or single}.{m[2]}.{m[3]}" for k, m in ups.items()}
    unknown = [k for k in sd if k not in names and not k.startswith(("sub_mean.", "add_mean."))]
    if unknown:
        raise LesrcnnError(f"unexpected key in checkpoint: {unknown[0]}")
    bias = sd.get("sub_mean.shifter.bias")
    mean = DIV2K_MEAN if bias is None else tuple(float(x) for x in (-bias).tolist())
    scales = tuple(sorted({int(m[1] or single) for m in ups.values()}))
    return {names[k]: v for k, v in sd.items() if k in names}, scales, mean  # type: ignore[return-value]


def _reason(e: BaseException) -> str:
    """One line for whatever damaged bytes make a reader raise (KeyError, struct.error, ...)."""
    if isinstance(e, MemoryError):
        return "declares more data than fits in memory"
    return one_line(f"{type(e).__name__}: {first_line(e)[:120]}" if str(e).strip() else type(e).__name__)


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch file, unpickled with ``weights_only`` (no code runs)."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e).lower()
        if "unsupported global" in text:
            raise LesrcnnError(f"{path}: refused: it holds pickled Python objects besides tensors (loading "
                               f"them could run code); only state dicts of tensors are accepted") from None
        if "weights only load failed" in text:
            raise LesrcnnError(f"{path}: not a readable PyTorch checkpoint (a pickle that is damaged or "
                               f"holds more than tensors; nothing in it was run)") from None
        raise LesrcnnError(f"{path}: not a readable PyTorch checkpoint ({_reason(e)})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise LesrcnnError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_safetensors(path: Path) -> bool:
    """Safetensors starts with an 8-byte header length and a JSON object; a length beyond the
    file is a damaged (or hostile) header, refused here before anything is allocated."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n, size = int.from_bytes(head[:8], "little"), path.stat().st_size
    if n + 8 > size:
        raise LesrcnnError(f"{path}: damaged safetensors header (it declares {n:,} bytes of header; the file "
                           f"has {size:,})")
    return n > 0


def check_tensors(sd: dict[str, torch.Tensor], source: object) -> None:
    """Refuse weights that would load but compute garbage: not floating point, without data (meta
    device), or holding NaN/Inf."""
    for k, v in sd.items():
        if v.device.type == "meta":
            raise LesrcnnError(f"{source}: tensor {k} has no data (meta device)")
        if not v.dtype.is_floating_point:
            dtype = str(v.dtype).removeprefix("torch.")
            raise LesrcnnError(f"{source}: tensor {k} is {dtype}, not floating point")
        if not bool(torch.isfinite(v).all()):
            raise LesrcnnError(f"{source}: tensor {k} holds NaN or Inf values")


def _build(sd: dict[str, torch.Tensor], path: Path, mean: tuple[float, ...], scales: tuple[int, ...],
           variant: str, meta: dict) -> Checkpoint:
    """The network holding ``sd`` as a Checkpoint; refused if the mean, a tensor, keys or shapes are bad."""
    if len(mean) != 3 or not all(math.isfinite(m) and -1.0 <= m <= 2.0 for m in mean):
        raise LesrcnnError(f"{path}: invalid channel mean {mean} (three finite values expected)")
    check_tensors(sd, path)
    model = LESRCNN(scales, variant, mean=mean)  # type: ignore[arg-type]
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = [f"{what} {len(ks)} key(s) e.g. {ks[0]}" for what, ks in (("missing", missing),
                                                                          ("unexpected", unexpected)) if ks]
        raise LesrcnnError(f"{path}: does not fit the LESRCNN network ({'; '.join(parts)})")
    for k, v in sd.items():
        if v.shape != own[k].shape:
            need = tuple(own[k].shape)
            raise LesrcnnError(f"{path}: {k} has shape {tuple(v.shape)}, the network needs {need}")
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return Checkpoint(model.eval(), scales, variant, mean, str(path), meta)  # type: ignore[arg-type]


def save(model: LESRCNN, path: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Write safetensors + metadata atomically (:func:`lesrcnn.io.atomic_write_bytes`)."""
    from safetensors.torch import save as save_bytes

    from .io import atomic_write_bytes

    path = Path(path)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": "LESRCNN",
            "variant": model.variant, "scales": ",".join(map(str, model.scales)),
            "mean": ",".join(f"{m:.6f}" for m in model.mean.flatten().tolist()),
            "parameters": str(model.num_parameters()), "code_version": __version__,
            "provenance": json.dumps(provenance or {}, sort_keys=True)}
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save_bytes(tensors, metadata=meta))
    return path


def embedded_path(name: str) -> Path:
    return Path(str(resources.files("lesrcnn") / "pretrained" / PRETRAINED[name]["file"]))


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # weights files are a few MB


def _load_ours(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            sd, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # SafetensorError, OSError, ValueError, MemoryError from damaged bytes
        raise LesrcnnError(f"{path}: not a readable safetensors file ({_reason(e)})") from None
    if meta.get("format") != FORMAT:
        raise LesrcnnError(f"{path}: a safetensors file but not an lesrcnn checkpoint (no format metadata)")
    try:
        scales = tuple(int(s) for s in meta["scales"].split(","))
        variant = meta.get("variant", "full")
        mean = tuple(float(m) for m in meta["mean"].split(","))
        if variant not in VARIANTS or not set(scales) <= set(SCALES) or len(set(scales)) != len(scales):
            raise ValueError
    except (KeyError, ValueError, AttributeError):
        raise LesrcnnError(f"{path}: invalid lesrcnn metadata") from None
    with contextlib.suppress(KeyError, json.JSONDecodeError):
        meta["provenance"] = json.loads(meta["provenance"])
    return _build(sd, path, mean, scales, variant, meta)


def _load_official(path: Path) -> Checkpoint:
    sd = _read_pth(path)
    if "head.weight" in sd:  # a plain state dict of our own network (e.g. a training checkpoint)
        raise LesrcnnError(f"{path}: a bare state dict of this network (no scale or variant recorded); "
                           f"write it with lesrcnn.weights.save(model, 'x.safetensors')")
    check_tensors(sd, path)  # all of them, the mean shift's too, before any is read
    try:
        ours, scales, mean = official_to_ours(sd)
    except (IndexError, TypeError, ValueError, KeyError) as e:
        raise LesrcnnError(f"{path}: not an LESRCNN checkpoint ({_reason(e)})") from None
    return _build(ours, path, mean, scales, "full", {"format": "official-pth"})


def load(spec: str | os.PathLike | None = None, *scales: int) -> Checkpoint:
    """Load a checkpoint: None (the embedded default), a registry name, a safetensors file
    of ours or an official ``.pth``. With ``scales``, refuse a model that cannot serve them."""
    spec = DEFAULT_WEIGHTS if spec is None else spec
    if isinstance(spec, str) and spec in PRETRAINED:
        path = embedded_path(spec)
        if not path.is_file():
            raise LesrcnnError(f"the embedded weights '{spec}' ({path.name}) are not in this installation; "
                               "pass --weights FILE")
        if sha256(path) != PRETRAINED[spec]["sha256"]:
            raise LesrcnnError(f"the embedded weights file {path} is corrupt (sha256 mismatch); "
                               "reinstall lesrcnn")
    else:
        path = Path(spec)
        if not path.exists():
            raise LesrcnnError(f"weights file not found: {path}")
        if not path.is_file():
            raise LesrcnnError(f"weights path is not a file: {path}")
    ck = _load_ours(path) if _is_safetensors(path) else _load_official(path)
    ck.source = str(spec)
    for s in scales:
        ck.require_scale(s)
    return ck


def describe(ck: Checkpoint) -> dict:
    multi = "-S (multi-scale)" if len(ck.scales) > 1 else ""
    return {"source": ck.source, "architecture": "LESRCNN" + multi,
            "variant": ck.variant, "scales": list(ck.scales), "parameters": ck.num_parameters,
            "mean": list(ck.mean),
            "metadata": {k: v for k, v in ck.metadata.items() if k not in ("scales", "variant", "mean")}}
