"""The frozen backbone's features of labelled samples, and of their augmented copies.

Training (:mod:`.ridge_training`) and the recipe's cross-validation (:mod:`.cv_evaluate`)
both run the backbone over a folder's images this way: in chunks that bound memory, with the
copies that come out as the picture itself (:func:`.dataset.load_view`) taking the picture's
features instead of a forward pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from artclf_core.lifecycle import ridge_head
from artclf_core.lifecycle.dataset import Sample, load_images, load_view

# the training's logger: the retrain DAG's log shows the progress lines
log = logging.getLogger("artclf.training")

#: Images per forward-pass chunk: bounds memory (decoded pixels and activations).
CHUNK = 256


def backbone_features(
    samples: Sequence[Sample],
    backbone: Any,
    size: int,
    *,
    view: int = 0,
    pictures: np.ndarray | None = None,
    groups: tuple[str, ...] = ridge_head.VIEW_TRANSFORMS,
    verbose: int = 0,
) -> np.ndarray:
    """(N, D) float32 features of ``samples`` through ``backbone``, in chunks.

    ``view`` > 0: of an augmented copy of each (:func:`.dataset.load_view`, with the recipe's
    :data:`.ridge_head.VIEW_TRANSFORMS` unless ``groups`` says otherwise); ``pictures``, the
    (N, D) features of view 0, stand in for the copies that come out unchanged, so only the
    changed ones go through the backbone."""
    if view and pictures is None:
        raise ValueError("an augmented view needs the pictures' own features (pictures=)")
    parts = []
    started = time.perf_counter()
    for i in range(0, len(samples), CHUNK):
        chunk = samples[i : i + CHUNK]
        if view:
            changed, x = load_view(chunk, view=view, groups=groups, size=size)
            part = np.array(pictures[i : i + CHUNK], dtype=np.float32)
            if len(x):
                part[changed] = backbone.predict(x.astype(np.float32), batch_size=64, verbose=0)
        else:
            x = load_images(chunk, size=size)
            part = backbone.predict(x.astype(np.float32), batch_size=64, verbose=0)
        parts.append(part)
        log.info(
            "backbone features %d/%d (view %d, %.0f s)",
            min(i + CHUNK, len(samples)),
            len(samples),
            view,
            time.perf_counter() - started,
        )
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)
