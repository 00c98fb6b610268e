"""Checkpoints: the authors' legacy ``.pth`` files, our safetensors format, the embedded weights.

Loading returns a :class:`Checkpoint` descriptor (model, scales, variant, mean, metadata) in
the spirit of spandrel, so callers never guess what a file holds.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .errors import LesrcnnError, one_line
from .model import DIV2K_MEAN, LESRCNN, SCALES, VARIANTS

FORMAT = "lesrcnn"
FORMAT_VERSION = "1"

# Weights that ship inside the package (trained by this project's own code, see README).
PRETRAINED: dict[str, dict] = {
    "lesrcnn-s": {"file": "lesrcnn_s.safetensors", "scales": (2, 3, 4),
                  "sha256": "8e018a6504a5f74c77514c4580140e1f15938bc4624b97d36109c8ace7a2bf8e",
                  "about": "multi-scale LESRCNN-S trained from scratch by `lesrcnn train` on T91+BSD200"},
    "real": {"file": "lesrcnn_s_real.safetensors", "scales": (2, 3, 4),
             "sha256": "5f5139bf31341a001490bd29282949e1752787b6b7a01184b88c801bcea5f906",
             "about": "multi-scale LESRCNN-S for real photos (JPEG, noise, blur): lesrcnn-s fine-tuned with "
                      "`--degradation real` on T91+BSD200"},
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

    def supports(self, scale: int) -> bool:
        return scale in self.scales

    def require_scale(self, scale: int) -> None:
        if scale not in self.scales:
            raise LesrcnnError(f"{self.source} is a x{'/x'.join(map(str, self.scales))} model; it cannot upscale x{scale}")


# --- the authors' checkpoints ------------------------------------------------------------------

def official_to_ours(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, tuple[float, float, float]]:
    """Map the released code's keys to ours; returns (state dict, scale, channel mean)."""
    if "upsample.up.body.0.weight" not in sd:
        raise LesrcnnError("not an LESRCNN checkpoint: no 'upsample.up.body.0.weight' key")
    n_up = sd["upsample.up.body.0.weight"].shape[0]
    scale = {256: 4 if "upsample.up.body.2.weight" in sd else 2, 576: 3}.get(n_up)
    if scale is None:
        raise LesrcnnError(f"not an LESRCNN checkpoint: upsampler has {n_up} output channels")
    out: dict[str, torch.Tensor] = {}
    mean = DIV2K_MEAN
    for k, v in sd.items():
        if k.startswith(("sub_mean.", "add_mean.")):
            if k == "sub_mean.shifter.bias":
                mean = tuple(float(x) for x in (-v).tolist())
            continue
        m = re.fullmatch(r"conv(\d+)\.0\.weight", k)
        m2 = re.fullmatch(r"conv17_(\d)\.0\.weight", k)
        m3 = re.fullmatch(r"upsample\.up\.body\.(\d)\.(weight|bias)", k)
        if m:
            i = int(m.group(1))
            if i == 1:
                out["head.weight"] = v
            elif 2 <= i <= 17:
                out[f"body{3 if i % 2 == 0 else 1}.{(i - 2) // 2}.weight"] = v
            elif i == 18:
                out["tail.weight"] = v
            else:
                raise LesrcnnError(f"unexpected key in checkpoint: {k}")
        elif m2:
            out[f"irb.{int(m2.group(1)) - 1}.weight"] = v
        elif m3:
            out[f"upsample.x{scale}.{m3.group(1)}.{m3.group(2)}"] = v
        else:
            raise LesrcnnError(f"unexpected key in checkpoint: {k}")
    return out, scale, mean  # type: ignore[return-value]


def _reason(e: BaseException) -> str:
    s = str(e).strip()
    return one_line(f"{type(e).__name__}: {s.splitlines()[0][:120]}" if s else type(e).__name__)


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch file, unpickled with ``weights_only`` (no code runs); every
    failure, whatever the damaged bytes make torch raise, is one LesrcnnError naming the file."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e).lower()
        if "unsupported global" in text:
            raise LesrcnnError(f"{path}: refused: it holds pickled Python objects besides tensors (loading them "
                               f"could run code); only state dicts of tensors are accepted") from None
        if "weights only load failed" in text:
            raise LesrcnnError(f"{path}: not a readable PyTorch checkpoint (a pickle that is damaged or holds more "
                               f"than tensors; nothing in it was run)") from None
        raise LesrcnnError(f"{path}: not a readable PyTorch checkpoint ({_reason(e)})") from None
    except MemoryError:
        raise LesrcnnError(f"{path}: not a readable PyTorch checkpoint (declares more data than fits in memory)") \
            from None
    except Exception as e:  # damaged bytes reach torch/pickle as KeyError, IndexError, struct.error...
        raise LesrcnnError(f"{path}: not a readable PyTorch checkpoint ({_reason(e)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise LesrcnnError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_tensors(sd: dict[str, torch.Tensor], source: object) -> None:
    """Refuse weights that would load but compute garbage: not floating point, on the meta device
    (no data), or holding NaN/Inf."""
    for k, v in sd.items():
        if v.device.type == "meta":
            raise LesrcnnError(f"{source}: tensor {k} has no data (meta device)")
        if not v.dtype.is_floating_point:
            raise LesrcnnError(f"{source}: tensor {k} is {str(v.dtype).removeprefix('torch.')}, not floating point")
        if not bool(torch.isfinite(v).all()):
            raise LesrcnnError(f"{source}: tensor {k} holds NaN or Inf values")


def _check_mean(mean: tuple[float, ...], source: object) -> tuple[float, float, float]:
    if len(mean) != 3 or not all(math.isfinite(m) and -1.0 <= m <= 2.0 for m in mean):
        raise LesrcnnError(f"{source}: invalid channel mean {mean} (three finite values expected)")
    return mean  # type: ignore[return-value]


def _load_into(model: LESRCNN, sd: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {missing[0]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[0]}")
        raise LesrcnnError(f"{source}: does not fit the LESRCNN network ({'; '.join(parts)})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise LesrcnnError(f"{source}: {k} has shape {tuple(v.shape)}, the network needs {tuple(own[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()})


# --- our format --------------------------------------------------------------------------------

def save(model: LESRCNN, path: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Write safetensors + metadata atomically (:func:`lesrcnn.io.atomic_write_bytes`)."""
    from safetensors.torch import save as save_bytes

    from .io import atomic_write_bytes

    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "LESRCNN",
        "variant": model.variant,
        "scales": ",".join(map(str, model.scales)),
        "mean": ",".join(f"{m:.6f}" for m in model.mean.flatten().tolist()),
        "parameters": str(model.num_parameters()),
        "code_version": __version__,
        "provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save_bytes(tensors, metadata=meta))
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except MemoryError:
        raise LesrcnnError(f"{path}: not a readable safetensors file (declares more data than fits in memory)") \
            from None
    except Exception as e:  # SafetensorError, OSError, ValueError... from damaged bytes
        raise LesrcnnError(f"{path}: not a readable safetensors file ({_reason(e)})") from None
    return sd, meta


def _is_safetensors(path: Path) -> bool:
    """Safetensors starts with an 8-byte header length and a JSON object; a length beyond the
    file is a damaged (or hostile) header, refused here before anything is allocated."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    size = path.stat().st_size
    if n + 8 > size:
        raise LesrcnnError(f"{path}: damaged safetensors header (it declares {n:,} bytes of header; the file has "
                           f"{size:,})")
    return n > 0


def embedded_path(name: str) -> Path:
    info = PRETRAINED[name]
    return Path(str(resources.files("lesrcnn") / "pretrained" / info["file"]))


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(spec: str | os.PathLike | None = None, scale: int | None = None) -> Checkpoint:
    """Load a checkpoint: None (the embedded default), a registry name, a safetensors file
    of ours or an official ``.pth``. With ``scale``, refuse a model that cannot serve it."""
    spec = DEFAULT_WEIGHTS if spec is None else spec
    if isinstance(spec, str) and spec in PRETRAINED:
        path = embedded_path(spec)
        if not path.is_file():
            raise LesrcnnError(f"the embedded weights '{spec}' are not in this installation; pass --weights FILE")
        want = PRETRAINED[spec].get("sha256")
        if want and sha256(path) != want:
            raise LesrcnnError(f"the embedded weights file {path} is corrupt (sha256 mismatch); reinstall lesrcnn")
    else:
        path = Path(spec)
        if not path.exists():
            raise LesrcnnError(f"weights file not found: {path}")
        if not path.is_file():
            raise LesrcnnError(f"weights path is not a file: {path}")
    source = str(spec)
    if _is_safetensors(path):
        sd, meta = _read_safetensors(path)
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
        _check_mean(mean, path)
        check_tensors(sd, path)
        model = LESRCNN(scales=scales, variant=variant, mean=mean)  # type: ignore[arg-type]
        _load_into(model, sd, str(path))
        metadata = dict(meta)
        if "provenance" in metadata:
            try:
                metadata["provenance"] = json.loads(metadata["provenance"])
            except json.JSONDecodeError:
                pass
    else:
        sd = _read_pth(path)
        if "head.weight" in sd:  # a plain state dict of our own network (e.g. a training checkpoint)
            raise LesrcnnError(f"{path}: a raw state dict; convert training checkpoints with `lesrcnn convert`")
        check_tensors(sd, path)
        try:
            ours, s, mean = official_to_ours(sd)
        except (IndexError, TypeError, ValueError, KeyError) as e:
            raise LesrcnnError(f"{path}: not an LESRCNN checkpoint ({_reason(e)})") from None
        _check_mean(mean, path)
        model = LESRCNN(scales=(s,), mean=mean)
        _load_into(model, ours, str(path))
        scales, variant, metadata = (s,), "full", {"format": "official-pth", "scales": str(s)}
    model.eval()
    ck = Checkpoint(model=model, scales=scales, variant=variant, mean=mean, source=source, metadata=metadata)  # type: ignore[arg-type]
    if scale is not None:
        ck.require_scale(scale)
    return ck


def describe(ck: Checkpoint) -> dict:
    return {
        "source": ck.source,
        "architecture": "LESRCNN" + ("-S (multi-scale)" if len(ck.scales) > 1 else ""),
        "variant": ck.variant,
        "scales": list(ck.scales),
        "parameters": ck.num_parameters,
        "mean": list(ck.mean),
        "metadata": {k: v for k, v in ck.metadata.items() if k not in ("scales", "variant", "mean")},
    }
