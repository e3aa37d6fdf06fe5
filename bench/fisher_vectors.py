"""Fisher vectors of the backbone's local descriptors beside the shipped features, under the
grouped cross-validation.

    python bench/fisher_vectors.py --features-cache F.npz --local-cache L.npz
        [--data ../shared/data/artworks] [--folds 5] [--components 16] [--dims 32]
        [--variants base,base+fv3,...]

The shipped texture blocks pool each stage's feature map into one Gaussian per picture
(each channel's mean and spread, and the channel correlations). Texture and material
recognition does better with a *mixture*: FV-CNN (Cimpoi et al., "Deep filter banks for
texture recognition", 2015) encodes a convolutional layer's local descriptors as a Fisher
vector over a Gaussian mixture fitted to them, so a picture made of two kinds of marks (a
print's hatched shadows and its bare paper) is described as that, not as their average.

For each stage named (3: 40 channels at 20 x 20; 4: 80 at 10 x 10; 5: 112 at 10 x 10, at
160 px), per fold and on the fold's training images only: PCA whitening to ``--dims``, a
diagonal Gaussian mixture of ``--components``, then every picture's improved Fisher vector
(first and second order, signed square root, L2), appended to the shipped features (the
cache ``bench/source_cv.py --features-cache`` writes) under the shipped ridge head (lam 10,
sources balanced by 1/sqrt(n)) on the model card's folds. Printed: pooled balanced accuracy
and per-class recall. Results: docs/model-card.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _feature_cv import Folds, figures  # noqa: E402

from artclf_core import CLASSES  # noqa: E402
from artclf_core.images.model_input import open_rgb, to_model_input  # noqa: E402
from artclf_core.lifecycle import cv_evaluate, ridge_head, source_cv  # noqa: E402
from artclf_core.lifecycle.dataset import scan_labelled_folder  # noqa: E402

SIZE = 160
STAGES = (3, 4, 5)
CHUNK = 128
#: Descriptors per fold that the PCA and the mixture are fitted on.
FIT_SAMPLE = 60_000


def local_descriptors(samples) -> dict[str, np.ndarray]:
    """``stage<s>``: (N, H*W, C) float16, the output of stage s at every position."""
    import keras

    from artclf_core.model.texture import build_texture_backbone, tap_layer_name

    net = build_texture_backbone(SIZE, variant="lite1")
    taps = [net.get_layer(tap_layer_name(net, s, "lite1")).output for s in STAGES]
    probe = keras.Model(net.input, taps)
    out: dict[str, list[np.ndarray]] = {f"stage{s}": [] for s in STAGES}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(0, len(samples), CHUNK):
            part = samples[i : i + CHUNK]
            x = np.stack(
                list(pool.map(lambda s: to_model_input(open_rgb(str(s.path)), SIZE), part))
            ).astype(np.float32)
            for s, fmap in zip(STAGES, probe.predict(x, batch_size=32, verbose=0), strict=True):
                out[f"stage{s}"].append(
                    fmap.reshape(len(part), -1, fmap.shape[-1]).astype(np.float16)
                )
            print(f"  {i + len(part)}/{len(samples)} ({time.perf_counter() - started:.0f} s)")
    return {k: np.concatenate(v) for k, v in out.items()}


def fisher_vectors(local: np.ndarray, train: np.ndarray, k: int, dims: int) -> np.ndarray:
    """(N, P, C) local descriptors -> (N, 2 k dims) improved Fisher vectors, the PCA and the
    mixture fitted on the descriptors of the ``train`` pictures only."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    n, p, c = local.shape
    pool = local[train].reshape(-1, c).astype(np.float32)
    fit = pool[rng.choice(len(pool), min(FIT_SAMPLE, len(pool)), replace=False)]
    pca = PCA(min(dims, c), whiten=True, random_state=0).fit(fit)
    gmm = GaussianMixture(k, covariance_type="diag", max_iter=100, random_state=0)
    gmm.fit(pca.transform(fit))
    mu, sd, pi = gmm.means_, np.sqrt(gmm.covariances_), gmm.weights_
    out = np.empty((n, 2 * k * mu.shape[1]), dtype=np.float32)
    for i in range(0, n, 64):
        x = pca.transform(local[i : i + 64].reshape(-1, c).astype(np.float32))
        gamma = gmm.predict_proba(x).reshape(-1, p, k)  # (b, P, k)
        x = x.reshape(-1, p, 1, x.shape[1])
        u = (x - mu) / sd  # (b, P, k, d)
        first = np.einsum("bpk,bpkd->bkd", gamma, u) / (p * np.sqrt(pi)[:, None])
        second = np.einsum("bpk,bpkd->bkd", gamma, u**2 - 1) / (p * np.sqrt(2 * pi)[:, None])
        fv = np.concatenate([first.reshape(len(first), -1), second.reshape(len(first), -1)], 1)
        fv = np.sign(fv) * np.sqrt(np.abs(fv))
        out[i : i + 64] = fv / (np.linalg.norm(fv, axis=1, keepdims=True) + 1e-12)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/artworks")
    ap.add_argument("--features-cache", required=True)
    ap.add_argument("--local-cache", required=True)
    ap.add_argument("--folds", type=int, default=5, help="0: leave one family out")
    ap.add_argument("--components", type=int, default=16)
    ap.add_argument("--dims", type=int, default=32)
    ap.add_argument("--lam", type=float, default=10.0)
    ap.add_argument("--variants", default="base,base+fv3,base+fv4,base+fv5,base+fv3+fv4+fv5")
    args = ap.parse_args()
    samples = scan_labelled_folder(args.data)
    base = cv_evaluate.cached_features(samples, SIZE, 1, "lite1", args.features_cache)[0]
    if not Path(args.local_cache).exists():
        np.savez(args.local_cache, **local_descriptors(samples))
    with np.load(args.local_cache) as z:
        local = {k: z[k] for k in z.files}
    folds = Folds.of(samples)
    plan = [
        (np.asarray(tr), np.asarray(te))
        for _, tr, te in source_cv.plan(folds.groups, args.folds or None)
    ]
    variants = [v.split("+") for v in args.variants.split(",")]
    wanted = sorted({b for v in variants for b in v if b.startswith("fv")})
    scores = {"+".join(v): np.zeros((len(samples), len(CLASSES))) for v in variants}
    started = time.perf_counter()
    for fold, (train, test) in enumerate(plan):
        blocks = {"base": base}
        for b in wanted:
            blocks[b] = fisher_vectors(local[f"stage{b[2:]}"], train, args.components, args.dims)
        for v in variants:
            x = np.concatenate([blocks[b] for b in v], axis=1).astype(np.float64)
            head = ridge_head.fit(
                x[train],
                folds.y[train],
                folds.sources[train],
                n_classes=len(CLASSES),
                lam=args.lam,
                with_basis=False,
            )
            scores["+".join(v)][test] = head.logits(x[test])
        print(f"fold {fold} done ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"{len(samples)} images, grouped {args.folds}-fold, k {args.components}, d {args.dims}")
    for name, s in scores.items():
        balanced_accuracy, recall = figures(s, folds)
        print(f"{name:28s} {balanced_accuracy:.3f}  {recall}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
