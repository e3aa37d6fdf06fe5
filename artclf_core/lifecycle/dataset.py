"""The labelled folder ``DIR/<class>/<source>__<name>`` as samples, and the source-disjoint
validation split.

The product is judged on images from museums, books and photographers that are not in the
training folder, so the split holds out *whole sources*: a model that learns "greyscale 1900s
book scan = engraving" looks excellent on a random split and fails in production. Near copies
(the same picture in two sources) are grouped so that they never straddle the split.

Pixels always go through :func:`artclf_core.images.model_input.open_rgb` and
:func:`~artclf_core.images.model_input.to_model_input`, the same functions ingestion uses.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from artclf_core import CLASSES, IMAGE_SIZE
from artclf_core.images import fingerprints
from artclf_core.images.model_input import open_rgb, to_model_input

#: File suffixes treated as images; everything else (README, MANIFEST.csv, .DS_Store) is skipped.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
#: Default share of each class held out for validation.
VAL_FRACTION = 0.2
#: The JPEG draft the validation split's near-copy grouping decodes at. Frozen at the value
#: the shipped model's split was made with: the grouping only has to be stable, and a decode
#: that flips a few hash bits would move images between training and validation and make
#: model cards incomparable (ingestion's own draft, model_input.DRAFT_SIZE, may change).
SPLIT_DRAFT_SIZE: tuple[int, int] = (300, 300)

ValMode = Literal["source", "random", "none"]


@dataclass(frozen=True, order=True)
class Sample:
    """One labelled image: its path, class and source (the file-name prefix before ``__``)."""

    path: Path
    label: str
    source: str


def scan_labelled_folder(data_dir: str | os.PathLike[str]) -> list[Sample]:
    """List the images of ``DIR/<label>/*`` as :class:`Sample`\\ s, sorted by path.

    Every sub-folder must be one of :data:`artclf_core.CLASSES` (a typo such as ``paintings``
    would otherwise silently drop a whole class); hidden entries and non-image files are
    skipped. The source is the file-name prefix before ``__`` or, without one, the class folder.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"training folder {root} does not exist")
    samples: list[Sample] = []
    for sub in sorted(root.iterdir()):
        if sub.name.startswith(".") or not sub.is_dir():
            continue
        if sub.name not in CLASSES:
            raise ValueError(f"folder {sub} is not a class; expected one of {', '.join(CLASSES)}")
        for f in sorted(sub.iterdir()):
            if f.name.startswith(".") or not f.is_file():
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            source = f.name.split("__", 1)[0] if "__" in f.name else sub.name
            samples.append(Sample(f, sub.name, source))
    if not samples:
        raise ValueError(f"no images found under {root}")
    return samples


def scan_unlabelled_folder(folder: str | os.PathLike[str]) -> list[Sample]:
    """List the images of ``DIR/<collection>/**`` as :class:`Sample`\\ s without a label
    (``label`` ""), their collection as their ``source``, sorted by path: what self-training
    (:mod:`.self_training`) learns a collection's look from. Images directly in ``DIR`` are
    one collection named after it; hidden entries and non-image files are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"unlabelled folder {root} does not exist")
    samples: list[Sample] = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        collection = rel.parts[0] if len(rel.parts) > 1 else root.name
        samples.append(Sample(f, "", collection))
    return samples


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (used to keep exact duplicates on one side of a split)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_OBJECT_LOT = re.compile(r"^(?:\d+_)?([A-Za-z]+(?:-[A-Za-z]+)*-\d+)")


_NUMBER = re.compile(r"^\d+$")


def sub_source_key(sample: Sample) -> str:
    """The finer grouping key used when a class has a single source.

    - Museum object numbers (``rijks__0009632_RP-T-1889-A-2046(R).jpg``): the acquisition lot,
      i.e. the object number up to its first number (``RP-T-1889``). A lot is one collection
      entering the museum, often one artist or album, and keeps recto/verso sheets together,
      so it is the closest thing to a "sub-source" there is.
    - Plain running numbers (``orthodoxshop__044.jpg``): blocks of ten consecutive numbers
      (``04x``), because neighbouring shop listings tend to be the same painter or series.
    - Anything else: the file itself.
    """
    stem = Path(sample.path).stem
    rest = stem.split("__", 1)[1] if "__" in stem else stem
    m = _OBJECT_LOT.match(rest)
    if m:
        return m.group(1)
    if _NUMBER.match(rest):
        return f"{int(rest) // 10:0{max(1, len(rest) - 1)}d}x"
    return rest


def _rng_for(seed: int, label: str) -> np.random.Generator:
    """A generator per (seed, class), so one class's choice does not depend on the others."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _choose_groups(sizes: dict[str, int], target: float, rng: np.random.Generator) -> set[str]:
    """Pick groups whose total size is close to ``target``, never all of them and never none.

    With few groups (the sources of one class) every proper subset is tried and the closest
    wins, ties broken by ``rng``; with many (acquisition lots) a seeded greedy pass adds groups
    in random order while they fit under the target.
    """
    keys = sorted(sizes)
    if len(keys) < 2:
        return set()
    if len(keys) <= 12:
        best: list[tuple[str, ...]] = []
        best_diff = math.inf
        for r in range(1, len(keys)):
            for combo in itertools.combinations(keys, r):
                diff = abs(sum(sizes[k] for k in combo) - target)
                if diff < best_diff - 1e-9:
                    best, best_diff = [combo], diff
                elif abs(diff - best_diff) <= 1e-9:
                    best.append(combo)
        return set(best[int(rng.integers(len(best)))])
    chosen: set[str] = set()
    total = 0
    for i in rng.permutation(len(keys)):
        k = keys[int(i)]
        if total + sizes[k] <= target:
            chosen.add(k)
            total += sizes[k]
    if not chosen:
        chosen.add(min(keys, key=lambda k: (sizes[k], k)))
    return chosen


def split_by_source(
    samples: Sequence[Sample],
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    *,
    mode: Literal["source", "random"] = "source",
    keep: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Sample], list[Sample]]:
    """Split into ``(train, validation)`` so that validation sources are never trained on.

    For each class, whole ``(class, source)`` groups are held out, choosing the subset of
    sources whose size is closest to ``val_fraction`` of the class (never all of them, so the
    class is still learnt). A class with a single source (drawings are all ``rijks``, icons all
    ``orthodoxshop``) falls back to :func:`sub_source_key` groups, and to single files if even
    that gives one group, so every class with two or more images appears in validation.
    ``mode="random"`` is a plain stratified split per class (single files), kept only to show
    how much a random split overstates accuracy. Sources in ``keep`` (curator collections,
    whose labels are what the retraining is for) always stay in training.

    Copies always stay on one side: files with identical SHA-256, and near copies by the
    ingest pipeline's own rule (pHash and dHash within 14 bits, see
    :mod:`artclf_core.images.fingerprints`),
    form one group (:func:`duplicate_groups`); within a class their groups are merged before
    choosing, and a copy shared by two classes goes to training, so neither an exact nor a
    re-encoded/resized copy can be scored as an "unseen" image.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    if mode not in ("source", "random"):
        raise ValueError(f"unknown split mode {mode!r}")
    hashes = duplicate_groups(samples)
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in sorted(samples):
        if s.source not in keep:
            by_class[s.label].append(s)
    key_fns: list[Callable[[Sample], str]] = [lambda s: str(s.path)]
    if mode == "source":
        key_fns = [lambda s: s.source, sub_source_key, *key_fns]
    val: set[Sample] = set()
    for label, items in sorted(by_class.items()):
        rng = _rng_for(seed, label)
        for key_fn in key_fns:
            groups = _groups_merging_duplicates(items, key_fn, hashes)
            if len(groups) >= 2:
                target = val_fraction * len(items)
                chosen = _choose_groups({k: len(v) for k, v in groups.items()}, target, rng)
                for k in chosen:
                    val.update(groups[k])
                break
    # A duplicate across two classes: keep every copy in training.
    train_hashes = {hashes[s] for s in samples if s not in val}
    val = {s for s in val if hashes[s] not in train_hashes}
    train_list = [s for s in sorted(samples) if s not in val]
    val_list = [s for s in sorted(samples) if s in val]
    return train_list, val_list


def duplicate_groups(samples: Sequence[Sample]) -> dict[Sample, str]:
    """Map each sample to the SHA-256 of the first member of its group of copies.

    Exact copies share a SHA-256; near copies (re-encoded, resized, slightly cropped) are found
    with the same pHash + dHash rule ingestion uses. Chains are followed (union-find), so a
    copy of a copy joins the group too.
    """

    ordered = sorted(samples)
    shas = [file_sha256(s.path) for s in ordered]
    phashes, dhashes = [], []
    for s in ordered:
        p, d = fingerprints.image_hashes(open_rgb(str(s.path), draft_size=SPLIT_DRAFT_SIZE))
        phashes.append(p)
        dhashes.append(d)
    found = fingerprints.find_duplicates_in_batch(shas, phashes, dhashes=dhashes)
    root = list(range(len(ordered)))
    for i, hit in enumerate(found):
        if hit is not None:
            root[i] = root[hit[1]]  # hit[1] < i, so its root is final already
    return {s: shas[root[i]] for i, s in enumerate(ordered)}


def _groups_merging_duplicates(
    items: Sequence[Sample], key_fn: Callable[[Sample], str], hashes: dict[Sample, str]
) -> dict[str, list[Sample]]:
    """Group ``items`` by ``key_fn``, merging groups that share a file hash (union-find).

    A merged group is named after its alphabetically first key, so names stay deterministic.
    """
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first_key_of_hash: dict[str, str] = {}
    for s in items:
        k = key_fn(s)
        parent.setdefault(k, k)
        other = first_key_of_hash.setdefault(hashes[s], k)
        a, b = find(k), find(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in items:
        groups[find(key_fn(s))].append(s)
    return dict(groups)


def describe_split(train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, Any]:
    """Summarise a split per class: counts and which sources are (partly) held out."""
    out: dict[str, Any] = {"n_train": len(train), "n_val": len(val), "classes": {}}
    for label in CLASSES:
        tr = Counter(s.source for s in train if s.label == label)
        va = Counter(s.source for s in val if s.label == label)
        if not tr and not va:
            continue
        out["classes"][label] = {
            "train": dict(sorted(tr.items())),
            "val": dict(sorted(va.items())),
            "val_groups": sorted(
                {
                    s.source if s.source not in tr else f"{s.source}:{sub_source_key(s)}"
                    for s in val
                    if s.label == label
                }
            ),
        }
    return out


def view_seed(sample: Sample, view: int) -> list[int]:
    """The seed of ``sample``'s augmented ``view``: from its class and file name, so a view
    is the same picture whatever the order or the chunk the sample comes in."""
    digest = hashlib.sha256(f"{sample.label}/{Path(sample.path).name}".encode()).digest()
    return [view, int.from_bytes(digest[:8], "big")]


def load_images(
    samples: Sequence[Sample],
    *,
    size: int = IMAGE_SIZE,
    workers: int | None = None,
    view: int = 0,
    groups: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Decode samples into a uint8 array (N, size, size, 3) with the ingestion preprocessing.

    ``size`` is the model's input side (:attr:`ArtModel.image_size`: 150 for the cnn, the
    backbone's chosen resolution otherwise). Decoding once up front (about 100 MB at 150 px,
    175 MB at 192 px for the 1,576 shared images) makes each epoch pure tensor work; a couple
    of threads overlap Pillow's decoding, which releases the GIL. ``view`` 0 is the picture
    as ingestion sees it; view ``v > 0`` is one augmented view of it
    (:func:`artclf_core.lifecycle.augment.augment` with its ``groups`` of transforms, all by
    default, seeded by :func:`view_seed`).
    """
    out = np.empty((len(samples), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        img = open_rgb(str(samples[i].path))
        out[i] = to_model_input(_view(img, samples[i], view, groups) if view else img, size)

    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(samples))))
    return out


def load_view(
    samples: Sequence[Sample],
    *,
    view: int,
    groups: tuple[str, ...] | None = None,
    size: int = IMAGE_SIZE,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(changed, inputs)``: which samples augmented ``view`` (> 0) of :func:`load_images`
    changes, a bool array (N,), and the model inputs of those only.

    A copy can come out as the picture itself (half of the tone-only draws apply no tone, and
    greyscale leaves a grey picture as it was); its features are the picture's, so callers
    reuse those instead of running the backbone again (about half the forward passes of the
    recipe's copies)."""
    if view < 1:
        raise ValueError(f"view must be at least 1 (0 is the picture itself), got {view}")
    changed = np.zeros(len(samples), dtype=bool)
    inputs: list[np.ndarray | None] = [None] * len(samples)

    def one(i: int) -> None:
        img = open_rgb(str(samples[i].path))
        copy = to_model_input(_view(img, samples[i], view, groups), size)
        if not np.array_equal(copy, to_model_input(img, size)):
            changed[i], inputs[i] = True, copy

    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(samples))))
    kept = [x for x in inputs if x is not None]
    return changed, (np.stack(kept) if kept else np.zeros((0, size, size, 3), np.uint8))


def _view(
    img: Image.Image, sample: Sample, view: int, groups: tuple[str, ...] | None
) -> Image.Image:
    """``sample``'s augmented ``view`` of its decoded picture ``img`` (left unchanged)."""
    from artclf_core.lifecycle import augment

    rng = np.random.default_rng(view_seed(sample, view))
    return augment.augment(img, rng, augment.GROUPS if groups is None else groups)


def trained_sources(split: dict[str, Any] | None) -> dict[str, set[str]] | None:
    """``{class: sources with training images}`` from a model's stored split, if any."""
    if not split or not isinstance(split.get("classes"), dict):
        return None
    return {c: set((info or {}).get("train", {})) for c, info in split["classes"].items()}
