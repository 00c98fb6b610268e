"""``lesrcnn info`` (what a checkpoint holds) and ``lesrcnn convert`` (official .pth -> ours)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path



def add_info(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", description="Describe a checkpoint: network, scales, parameters, channel "
                       "mean, and the provenance in our files (training data, recipe, measured PSNR).")
    p.add_argument("file", nargs="?", help="checkpoint (ours or an official .pth); default: the embedded one")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts), not the summary")
    p.add_argument("--flops", action="store_true", help="also count MACs/FLOPs per block")
    p.add_argument("--size", default="256x256", help="LR input size HxW for --flops")
    p.add_argument("--backends", action="store_true",
                   help="instead: the inference backends installed, which one --backend auto picks, and why")
    p.set_defaults(func=run_info)
    return p


def run_info(a) -> int:
    from . import weights as W

    if a.backends:
        d = backends_info()
        rows = {f"backend {n}": st for n, st in d["installed"].items()}
        rows |= {f"auto {p} (cpu)": f"{v['picks'] or 'nothing'}: {v['rule']}" for p, v in d["auto"].items()}
        print(json.dumps(d, indent=2) if a.json else "\n".join(_block(rows)))
        return 0

    from .complexity import complexity_report, format_complexity

    ck = W.load(a.file)
    d = W.describe(ck)
    if a.flops:
        d["complexity"] = complexity_report(ck.model, a.size)
    lines = summary_lines(d) + ([format_complexity(d["complexity"])] if a.flops else [])
    print(json.dumps(d, indent=2) if a.json else "\n".join(lines))
    return 0


def backends_info() -> dict:
    """Each backend's install status, and ``auto``'s pick on the CPU per precision with its rule."""
    from .backends import AUTO_ORDER, BACKENDS, auto_report, installed

    auto = {}
    for prec in ("fp32", "int8"):
        picked = next((n for n, st in auto_report(prec) if st == "picked"), None)
        auto[prec] = {"picks": picked, "rule": "first installed of " + " > ".join(AUTO_ORDER[prec]) +
                      " (fastest first, measured side by side by `lesrcnn bench`)"}
    return {"installed": {n: installed(n) or "installed" for n in BACKENDS if n != "auto"}, "auto": auto}


def summary_lines(d: dict) -> list[str]:
    """``weights.describe`` as aligned ``key  value`` lines, the provenance last."""
    meta = {k: v for k, v in d["metadata"].items() if k != "parameters"}
    prov = meta.pop("provenance", None)
    head = {
        "file": d["source"],
        "network": f"{d['architecture']}, variant {d['variant']}",
        "scales": ", ".join(f"x{s}" for s in d["scales"]),
        "parameters": f"{d['parameters']:,} (mean shift excluded)",
        "mean": ", ".join(f"{m:.4f}" for m in d["mean"]),
    }
    return _block(head | meta | ({"provenance": prov} if prov else {}))


def _scalar(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list) and not any(isinstance(x, (dict, list)) for x in v):
        return ", ".join(map(_scalar, v))
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _block(d: dict, indent: int = 0) -> list[str]:
    """Aligned ``key  value`` lines; a nested dict indented below its key, and a dict of like flat
    records (the measured results) as a table."""
    pad, out = " " * indent, []
    width = max((len(str(k)) for k in d), default=0) + 2
    for k, v in d.items():
        rows = list(v.values()) if isinstance(v, dict) else []
        if len(rows) > 1 and all(isinstance(r, dict) and r and set(r) == set(rows[0]) and
                                 not any(isinstance(x, (dict, list)) for x in r.values()) for r in rows):
            out += [f"{pad}{k}"] + _table(v, indent + 2)
        elif isinstance(v, dict) and v:
            out += [f"{pad}{k}"] + _block(v, indent + 2)
        else:
            out.append(f"{pad}{str(k):<{width}}{_scalar(v)}")
    return out


def _table(rows: dict, indent: int) -> list[str]:
    cols = list(next(iter(rows.values())))
    cells = [[""] + cols] + [[str(name)] + [_scalar(r[c]) for c in cols] for name, r in rows.items()]
    widths = [max(map(len, column)) for column in zip(*cells)]
    aligned = ([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])] for row in cells)
    return [(" " * indent + "  ".join(cols)).rstrip() for cols in aligned]


def add_convert(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", description="Convert the authors' .pth checkpoint (loaded without running "
                       "pickled code) to our safetensors file with metadata.")
    p.add_argument("src", help="the .pth (or our .safetensors) checkpoint to convert")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=run_convert)
    return p


def run_convert(a) -> int:
    from . import weights as W
    from .io import check_output

    out, src = check_output(a.output, a.overwrite, [a.src]), Path(a.src)
    ck = W.load(a.src)
    fmt = ck.metadata.get("format")
    W.save(ck.model, out, {"converted_from": src.name, **({"source_format": fmt} if fmt else {})})
    print(f"wrote {out} (x{'/x'.join(map(str, ck.scales))}, {ck.num_parameters:,} parameters)")
    return 0
