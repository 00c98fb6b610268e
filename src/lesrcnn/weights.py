"""Checkpoints: the authors' legacy ``.pth`` files, our safetensors format, the embedded weights.

Loading returns a :class:`Checkpoint` descriptor (model, scales, variant, mean, metadata) in
the spirit of spandrel, so callers never guess what a file holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from . import __version__
from .errors import LesrcnnError
from .model import DIV2K_MEAN, LESRCNN, SCALES, VARIANTS

FORMAT = "lesrcnn"
FORMAT_VERSION = "1"

# Weights that ship inside the package (trained by this project's own code, see README).
PRETRAINED: dict[str, dict] = {
    "lesrcnn-s": {"file": "lesrcnn_s.safetensors", "scales": (2, 3, 4),
                  "sha256": "8e018a6504a5f74c77514c4580140e1f15938bc4624b97d36109c8ace7a2bf8e",
                  "about": "multi-scale LESRCNN-S trained from scratch by `lesrcnn train` on T91+BSD200"},
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


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LesrcnnError(f"{path}: not a readable PyTorch state dict ({first[:160]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LesrcnnError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


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
    """Write safetensors + metadata atomically (temp file in the same folder, then rename)."""
    from safetensors.torch import save_file

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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LesrcnnError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
    return sd, meta


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100_000_000 and head[8:9] == b"{"


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
            if variant not in VARIANTS or not set(scales) <= set(SCALES) or len(mean) != 3:
                raise ValueError
        except (KeyError, ValueError):
            raise LesrcnnError(f"{path}: invalid lesrcnn metadata") from None
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
        ours, s, mean = official_to_ours(sd)
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
