"""How many real images the trailing-data rule refuses, and what its scan costs.

    .venv/bin/python bench/trailing_data.py [../shared/data/artworks]

Every image file under the folder goes through ``decode_image`` (as ingestion does); the
figure to watch is the count of ``trailing_data`` refusals (it must stay 0 on real artworks)
and the milliseconds per image of ``_image_end`` beside the whole decode.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

from artclf_core.images.decode import ImageRejected, _image_end, decode_image

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}


def main(root: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    outcomes: collections.Counter[str] = collections.Counter()
    scan = decode = 0.0
    for path in files:
        data = path.read_bytes()
        started = time.process_time()
        try:
            image = decode_image(data)
        except ImageRejected as exc:
            outcomes[exc.reason] += 1
            if exc.reason == "trailing_data":
                print(f"refused {path}: {exc.message}")
            continue
        finally:
            decode += time.process_time() - started
        started = time.process_time()
        _image_end(data, image.format)
        scan += time.process_time() - started
        outcomes[f"accepted {image.format}"] += 1
    n = max(len(files), 1)
    print(f"{len(files)} files: {dict(outcomes)}")
    print(
        f"end-of-image scan {scan / n * 1e3:.3f} ms CPU per image, "
        f"{scan / max(decode, 1e-9):.1%} of decode_image's {decode / n * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/artworks"))
