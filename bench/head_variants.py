"""Other heads on the shipped features, under the grouped cross-validation.

    python bench/head_variants.py --features-cache F.npz [--data ../shared/data/artworks]
        [--folds 5] [--variants ridge,blocks,nystroem,logreg,mlp,invariant]

The shipped head is a closed-form ridge classifier on the standardised frozen features
(``artclf_core.lifecycle.ridge_head``). This bench asks whether a head with more capacity or
another loss generalises better to held-out source families, on the same features
(``cv_evaluate.cached_features``: Lite1 at 160 px, texture statistics, channel correlations;
the cache is the one ``bench/source_cv.py --features-cache`` writes) and the model card's
folds (source families and near-copy groups never split), every head with the images
weighted as the ridge head weighs them (classes equal, a source of n images by 1/sqrt(n)):

- ``ridge``: the shipped head (lam 10);
- ``blocks``: one ridge head per feature block (pooled, texture statistics, correlations),
  their logits summed (each block regularised on its own scale);
- ``nystroem``: ridge on a 1,500-component Nystroem approximation of an RBF kernel of the
  standardised features (gamma 0.5/D and 1/D; lam 10 and 1);
- ``logreg``: multinomial logistic regression (C 1e-4 and 1e-3);
- ``mlp``: one hidden layer of 256 (scikit-learn, L2 alpha 1, 60 epochs), 3 seeds averaged;
- ``invariant``: ridge with a second penalty on the directions in which the training sources
  of one class differ (the within-class scatter of their means), mu 0 (= ridge), 10, 100, 1000.

Results: docs/model-card.md ("Other heads").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _feature_cv import Folds, figures  # noqa: E402

from artclf_core import CLASSES  # noqa: E402
from artclf_core.lifecycle import cv_evaluate, ridge_head, source_cv  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402

#: Column ranges of the shipped features: pooled 1280, texture statistics 896, correlations.
BLOCKS = (slice(0, 1280), slice(1280, 2176), slice(2176, None))

# A head: (train indices, test indices) -> the test images' scores (higher: more likely).
Head = Callable[[np.ndarray, np.ndarray], np.ndarray]


def heads(feats: np.ndarray, folds: Folds) -> dict[str, list[tuple[str, Head]]]:
    y, sources = folds.y, folds.sources

    def ridge(tr, te, x=feats, lam=10.0):
        head = ridge_head.fit(
            x[tr], y[tr], sources[tr], n_classes=len(CLASSES), lam=lam, with_basis=False
        )
        return head.logits(x[te])

    def standardised(tr):
        return (feats - feats[tr].mean(0)) / (feats[tr].std(0) + 1e-6)

    def weights(tr):
        return ridge_head.source_weights(y[tr], sources[tr], ridge_head.DEFAULT_SOURCE_POWER)

    def nystroem(gamma, lam):
        from sklearn.kernel_approximation import Nystroem

        def head(tr, te):
            z = standardised(tr)
            k = Nystroem(gamma=gamma / z.shape[1], n_components=1500, random_state=0)
            return ridge(tr, te, k.fit(z[tr]).transform(z), lam)

        return head

    def logreg(c):
        from sklearn.linear_model import LogisticRegression

        def head(tr, te):
            z = standardised(tr)
            model = LogisticRegression(C=c, max_iter=500)
            return model.fit(z[tr], y[tr], sample_weight=weights(tr)).decision_function(z[te])

        return head

    def invariant(mu, lam=10.0):
        """Ridge with a second penalty, ``mu * n * coef' S coef``: S is the within-class
        covariance of the training sources' means (the directions in which sources of one
        class differ), scaled to unit mean variance, so those directions shrink more."""

        def head(tr, te):
            z, w = standardised(tr), weights(tr)
            ztr, ytr, str_ = z[tr], y[tr], sources[tr]
            d = z.shape[1]
            scatter, total = np.zeros((d, d)), 0.0
            for c in np.unique(ytr):
                mc = ytr == c
                centre = np.average(ztr[mc], axis=0, weights=w[mc])
                for s in np.unique(str_[mc]):
                    ms = mc & (str_ == s)
                    delta = np.average(ztr[ms], axis=0, weights=w[ms]) - centre
                    scatter += w[ms].sum() * np.outer(delta, delta)
                    total += w[ms].sum()
            scatter /= total
            scatter *= d / np.trace(scatter)
            n = len(tr)
            target = np.eye(len(CLASSES))[ytr] - 1.0 / len(CLASSES)
            gram = (ztr * w[:, None]).T @ ztr + lam * n * np.eye(d) + mu * n * scatter
            coef = np.linalg.solve(gram, (ztr * w[:, None]).T @ target)
            return z[te] @ coef

        return head

    def mlp(tr, te):
        from sklearn.neural_network import MLPClassifier

        z, out = standardised(tr), 0.0
        for seed in range(3):
            model = MLPClassifier((256,), alpha=1.0, max_iter=60, random_state=seed)
            model.fit(z[tr], y[tr], sample_weight=weights(tr))
            out = out + np.log(model.predict_proba(z[te]) + 1e-9)
        return out

    return {
        "ridge": [("ridge lam 10 (shipped)", ridge)],
        "blocks": [
            (
                "ridge per block, logits summed",
                lambda tr, te: sum(ridge(tr, te, feats[:, b]) for b in BLOCKS),
            )
        ],
        "nystroem": [
            (f"Nystroem RBF gamma {g}/D, lam {lam:g}", nystroem(g, lam))
            for g, lam in ((0.5, 10.0), (0.5, 1.0), (1.0, 10.0))
        ],
        "logreg": [(f"logistic regression C {c:g}", logreg(c)) for c in (1e-4, 1e-3)],
        "mlp": [("MLP 256, alpha 1, 3 seeds", mlp)],
        "invariant": [
            (f"ridge + source-scatter penalty mu {mu:g}", invariant(mu))
            for mu in (0, 10, 100, 1000)
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--features-cache", required=True)
    ap.add_argument("--folds", type=int, default=5, help="0: leave one family out")
    ap.add_argument("--variants", default="ridge,blocks,nystroem,logreg,mlp")
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    feats = cv_evaluate.cached_features(samples, 160, 1, "lite1", args.features_cache)[0]
    feats = feats.astype(np.float64)
    folds = Folds.of(samples)
    plan = [
        (np.asarray(tr), np.asarray(te))
        for _, tr, te in source_cv.plan(folds.groups, args.folds or None)
    ]
    print(f"{len(samples)} images, {feats.shape[1]} features, {len(plan)} folds")
    table = heads(feats, folds)
    for variant in args.variants.split(","):
        for name, head in table[variant]:
            started = time.perf_counter()
            scores = np.zeros((len(folds.y), len(CLASSES)))
            for train, test in plan:
                scores[test] = head(train, test)
            balanced_accuracy, recall = figures(scores, folds)
            print(
                f"{name:40s} {balanced_accuracy:.3f}  {recall}"
                f"  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
