"""Largest absolute difference between the weights of two saved models, layer by layer.

    python scripts/compare_weights.py artclf_core/model/default.keras /tmp/retrained.keras

Used to show that a change of code leaves a model unchanged (issue 31: the ridge head fitted
by scikit-learn against the shipped default, retrained on the same data). Loads the files
with Keras; both must have the same architecture.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args(argv)
    import keras
    import numpy as np

    import artclf_core.model.texture  # noqa: F401 - registers the texture layer

    a, b = (keras.saving.load_model(p, compile=False) for p in (args.a, args.b))
    worst = 0.0
    for la in a.layers:
        wa, wb = la.get_weights(), b.get_layer(la.name).get_weights()
        if not wa:
            continue
        diff = max(float(np.abs(x - y).max()) for x, y in zip(wa, wb, strict=True))
        worst = max(worst, diff)
        print(f"{la.name:<24} {diff:.3g}")
    print(f"largest difference: {worst:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
