"""Curator labels and self-training together: what a collection gets from the nightly retrain
after a curator has labelled a few of its images.

    python bench/kshot_self_training.py --features-cache F3.npz [--data ../shared/data/artworks]
        [--folds 0] [--ks 0,5,10,20] [--draws 2] [--shots per-class|random|queue]

The retrain does both at once: a collection's curated artworks train the head as their own
source (weighed ``curator_labels.BOOST``), and its uncurated ones are learnt from as
pseudo-labels under the collection's own class priors (:mod:`artclf_core.lifecycle.self_training`).
The k-shot curve (:mod:`artclf_core.lifecycle.kshot`) measures the first alone, the
self-training benchmark the second alone. Here each held-out collection (``--folds 0``: each
source family, as the k-shot curve; ``--folds 5``: each fold's test set, eight families of
every class mixed) gets ``k`` curator labels and is scored after:

* ``labels``: the head fitted with them (with ``per-class``, the k-shot curve's figure);
* ``labels + self-training``: the same, then self-trained on the collection's unlabelled
  images (all of it but the labelled ones), priors estimated from the model's probabilities
  alone (what the retrain does);
* ``... priors from labels too``: the labelled images also enter the priors' estimate, as
  known images (their label as a certain probability).

Which images are labelled (``--shots``): ``per-class``, k of each class (drawn as the k-shot
curve draws them; the rest of those classes scored); ``random``, k images of the collection;
``queue``, the k at the top of the review queue (the lowest calibrated top probability of the
model that has not seen the collection, as the review page orders them). With ``random`` and
``queue`` every image of the collection is scored, a labelled one as its label (what the
catalogue shows: the curator's label first), so both are scored on the same images.
Balanced accuracy over the classes scored in each collection, averaged over collections, and
pooled over all scored images. Results: docs/model-card.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from artclf_core import CLASSES  # noqa: E402
from artclf_core.lifecycle import (  # noqa: E402
    curator_labels,
    cv_evaluate,
    kshot,
    label_shift,
    ridge_head,
    self_training,
    source_cv,
)
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402
from artclf_core.lifecycle.ridge_stats import Added, RidgeStats  # noqa: E402
from artclf_core.model import calibration  # noqa: E402

VARIANTS = ("labels", "labels + self-training", "labels + self-training, priors from labels too")


def _join(a: Added, b: Added) -> Added:
    return Added(
        np.concatenate([a.rows, b.rows], axis=1),
        np.concatenate([a.y, b.y]),
        np.concatenate([a.sources, b.sources]),
        np.concatenate([a.boost, np.ones(len(b.y)) if b.boost is None else b.boost]),
    )


def _self_train(stats, held, shots_added, pictures, start, temperature, known):
    """The collection's head after self-training on its unlabelled ``pictures``, the shots
    kept in every fit: :func:`self_training.adapt` itself (``known`` None), or the same loop
    with the priors estimated with ``known`` one-hot rows (the shots' labels) beside the
    pictures' probabilities."""

    def fit(added: Added) -> ridge_head.RidgeHead:
        return stats.head(held, with_basis=False, added=_join(shots_added, added))

    views = stats.x.shape[0]
    if known is None:
        collection = np.zeros(len(pictures))  # the whole held-out set is one collection
        return self_training.adapt(
            fit, pictures, start, views=views, temperature=temperature, collections=collection
        )[1]
    scores = start
    for _ in range(self_training.ROUNDS):
        probs = calibration.softmax(scores, temperature)
        priors = label_shift.estimate_priors(np.concatenate([probs, known]))
        probs = label_shift.reweight(probs, priors)
        kept = probs.max(1) >= self_training.THRESHOLD
        if not kept.any():
            break
        rows = np.repeat(pictures[None, kept], views, axis=0)
        head = fit(Added(rows, probs.argmax(1)[kept], np.full(kept.sum(), self_training.SOURCE)))
        scores = head.logits(pictures)
    return scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--features-cache", required=True)
    ap.add_argument("--folds", type=int, default=0, help="0: each source family a collection")
    ap.add_argument("--ks", default="0,5,10,20")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument(
        "--worst", type=int, default=0, help="list the N collections self-training hurts most"
    )
    ap.add_argument(
        "--shots",
        choices=["per-class", "random", "queue"],
        default="per-class",
        help="which images the curator labels: k of each class (the k-shot curve; the rest "
        "scored), or k images of the collection at random or from the top of the review queue "
        "(lowest calibrated top probability first; all of it scored, labelled ones as labelled)",
    )
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    feats = cv_evaluate.cached_features(
        samples, 160, ridge_head.DEFAULT_VIEWS, "lite1", args.features_cache
    )
    copy_keys, groups = cv_evaluate.grouping(samples)
    copy_keys = np.asarray(copy_keys)
    y = np.array([CLASSES.index(s.label) for s in samples])
    sources = np.array([s.source for s in samples])
    stats = RidgeStats(feats, y, sources, n_classes=len(CLASSES))
    k = args.folds or None
    plan = source_cv.plan(groups, k)
    plain = np.zeros((len(y), len(CLASSES)))
    for _, _, test in plan:
        plain[test] = stats.head(test, with_basis=False).logits(feats[0, test])
    temperature = calibration.calibration_summary(plain, y)["temperature"]
    ks = [int(v) for v in args.ks.split(",")]
    most = max(ks)
    per_collection = {(v, kk): [] for v in VARIANTS for kk in ks}
    pooled = {(v, kk): ([], []) for v in VARIANTS for kk in ks}
    by_name: dict[tuple[str, str, int], list[float]] = {}
    started = time.perf_counter()
    print(f"{cv_evaluate.plan_name(k, len(set(groups)))}; temperature {temperature:.3f}")
    for name, _, held in plan:
        if args.shots == "per-class":
            classes = [
                c for c in np.unique(y[held]) if (y[held] == c).sum() >= most + kshot.MIN_REST
            ]
            if not classes:
                continue
        elif len(held) < 2 * most:
            continue
        top = calibration.softmax(plain[held], temperature).max(1)
        for d in range(1 if args.shots == "queue" else args.draws):
            rng = np.random.default_rng([d, len(name), sum(map(ord, name))])
            if args.shots == "per-class":
                shots = {
                    c: kshot.draw_shots(held[y[held] == c], copy_keys, most, rng) for c in classes
                }
                taken = {i for s in shots.values() for i in s}
                test = np.array([i for i in held if y[i] in classes and i not in taken])
            else:
                order = (
                    held[np.argsort(top, kind="stable")]
                    if args.shots == "queue"
                    else rng.permutation(held)
                )
                test = held
            for kk in ks:
                if args.shots == "per-class":
                    chosen = np.array([i for c in classes for i in shots[c][:kk]], dtype=int)
                else:
                    chosen = np.sort(order[:kk]).astype(int)
                unlabelled = np.setdiff1d(held, chosen)
                shots_added = stats.images(
                    chosen, np.full(len(chosen), f"kshot:{name}"), curator_labels.BOOST
                )
                head = stats.head(held, with_basis=False, added=shots_added)
                pictures = stats.x[0, unlabelled]
                start = head.logits(pictures)
                known = np.eye(len(CLASSES))[y[chosen]]
                out = {
                    VARIANTS[0]: start,
                    VARIANTS[1]: _self_train(
                        stats, held, shots_added, pictures, start, temperature, None
                    ),
                    VARIANTS[2]: _self_train(
                        stats, held, shots_added, pictures, start, temperature, known
                    ),
                }
                for v, scores in out.items():
                    # a labelled image is catalogued under its curator's label
                    pred = y.copy()
                    pred[unlabelled] = scores.argmax(1)
                    got = kshot._balanced_accuracy(y[test], pred[test])
                    per_collection[(v, kk)].append(got)
                    by_name.setdefault((name, v, kk), []).append(got)
                    pooled[(v, kk)][0].extend(y[test])
                    pooled[(v, kk)][1].extend(pred[test])
            if most == 0:
                break
    print(f"({time.perf_counter() - started:.0f} s)")
    print("variant | " + " | ".join(f"k={kk}: mean over collections / pooled" for kk in ks))
    for v in VARIANTS:
        cells = []
        for kk in ks:
            t, p = (np.array(a) for a in pooled[(v, kk)])
            cells.append(
                f"{np.mean(per_collection[(v, kk)]):.3f} / {kshot._balanced_accuracy(t, p):.3f}"
            )
        print(f"{v} | " + " | ".join(cells))
    if args.worst:
        # the collections self-training reads worst without a label, and what labels do there
        def mean(name: str, v: str, kk: int) -> float:
            return float(np.mean(by_name[(name, v, kk)]))

        names = sorted({n for n, _, _ in by_name})
        lost = sorted(
            names, key=lambda n: mean(n, VARIANTS[1], ks[0]) - mean(n, VARIANTS[0], ks[0])
        )
        print(f"collections self-training costs most at k={ks[0]} (labels / + self-training):")
        for n in lost[: args.worst]:
            print(
                f"  {n}: "
                + "; ".join(
                    f"k={kk} {mean(n, VARIANTS[0], kk):.2f} / {mean(n, VARIANTS[1], kk):.2f}"
                    for kk in ks
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
