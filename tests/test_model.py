"""Tests of the model, its saved format, the source-disjoint split, training and the metrics.

Real TensorFlow, no mocks, and no dependency on ``../shared``: the images are small coloured
shapes drawn here, so the suite runs in a user's clone. Training happens once per module and
architecture, for one or two epochs on ~40 tiny images (the pretrained backbone at 64 px), to
keep the file around a minute of CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path

import imagegen
import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from artclf_core import CLASSES, EMBEDDING_DIM, IMAGE_SIZE  # noqa: E402
from artclf_core.lifecycle.dataset import Sample, scan_labelled_folder, split_by_source
from artclf_core.lifecycle.evaluation import evaluate
from artclf_core.lifecycle.metrics import classification_report, format_report, label_precision_at_k
from artclf_core.lifecycle.training import augment_image, train
from artclf_core.model.archs import (
    ARCHS,
    DEFAULT_ARCH,
    DEFAULT_IMAGE_SIZES,
    GRAM_ARCHS,
    TEXTURE_ARCHS,
)
from artclf_core.model.artmodel import (
    METADATA_MEMBER,
    ArtModel,
    build_model,
    default_model_path,
    make_version,
    read_metadata,
    save_model,
)

REPORT_KEYS = {"accuracy", "balanced_accuracy", "per_class", "confusion", "n", "classes"}
#: What train() and evaluate() add to classification_report's keys.
EVAL_KEYS = REPORT_KEYS | {"label_precision_at_5", "by_source"}
BACKBONE = "efficientnet_lite0"
#: Small input for the backbone tests: the architecture accepts any size >= 32.
TINY = 64


def _draw(label: str, i: int) -> Image.Image:
    """A tiny picture whose colours/shapes differ by class, so one epoch can learn something."""
    rng = np.random.default_rng([zlib.crc32(label.encode()), i])
    w, h = 96 + 8 * (i % 3), 80
    img = Image.new("RGB", (w, h), imagegen.class_background(label, rng))
    d = ImageDraw.Draw(img)
    x0, y0 = int(rng.integers(5, 30)), int(rng.integers(5, 30))
    if label == "drawings":
        for _ in range(6):
            ends = [tuple(int(v) for v in rng.integers(0, 80, 2)) for _ in range(2)]
            d.line(ends, fill=(60, 50, 40))
    elif label == "engraving":
        # Hatching whose slope and spacing vary, around a blank cartouche: varied enough that
        # the split's near-copy rule (pHash/dHash) does not merge the class into one group.
        step, slope = 3 + i % 3, int(rng.integers(-25, 26))
        for y in range(-30, h + 30, step):
            d.line([(0, y), (w, y + slope)], fill=(0, 0, 0))
        d.rectangle([x0, y0, x0 + 35, y0 + 25], fill=(250, 250, 250))
    elif label == "iconography":
        d.ellipse([x0, y0, x0 + 40, y0 + 40], fill=(120, 30, 30))
    elif label == "painting":
        for _ in range(5):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            box = [*rng.integers(0, 50, 2), *rng.integers(50, 96, 2)]
            d.rectangle([int(v) for v in box], fill=c)
    else:
        d.ellipse([x0, y0, x0 + 20 + 3 * (i % 5), y0 + 50], fill=(180, 180, 180))
        px = int(rng.integers(0, 70))
        d.rectangle([px, 60, px + 25, 80], fill=(120, 120, 120))  # a pedestal
    # A little noise makes every file unique, so only the deliberate copy is a duplicate.
    noise = rng.integers(-6, 7, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype("uint8"))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``DIR/<class>/<source>__NNN.ext``: two sources for three classes, one for the others,
    a README to skip, and one exact duplicate (copied bytes) under another name."""
    root = tmp_path_factory.mktemp("artworks")
    (root / "README.md").write_text("not an image\n")
    for label in CLASSES:
        folder = root / label
        folder.mkdir()
        (folder / "MANIFEST.csv").write_text("file\n")
        sources = ["solo"] if label in ("drawings", "iconography") else ["bookA", "bookB"]
        for j, source in enumerate(sources):
            for i in range(8 if len(sources) == 1 else (5, 3)[j]):
                ext = "png" if i % 3 == 0 else "jpg"
                _draw(label, 100 * j + i).save(folder / f"{source}__{i:03d}.{ext}")
    icons = root / "iconography"
    shutil.copyfile(icons / "solo__001.jpg", icons / "solo__017.jpg")
    return root


@pytest.fixture(scope="module")
def images(tiny_folder: Path) -> np.ndarray:
    from artclf_core.lifecycle.dataset import load_images

    return load_images(scan_labelled_folder(tiny_folder)[:10])


@pytest.fixture(scope="module")
def trained(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("model") / "tiny.keras"
    result = train(tiny_folder, out, epochs=2, batch_size=8, seed=0, verbose=0)
    return result


def test_one_forward_pass_returns_both_outputs() -> None:
    model = build_model(seed=0)
    x = np.random.default_rng(0).integers(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    out = model(x, training=False)
    assert set(out) == {"probabilities", "embedding"}
    assert tuple(out["probabilities"].shape) == (3, len(CLASSES))
    assert tuple(out["embedding"].shape) == (3, EMBEDDING_DIM)
    assert model.get_layer("embedding").activation.__name__ == "linear"
    # Augmentation must not live in the inference model.
    assert not any("random" in layer.name.lower() for layer in model.layers)


def test_predict_shapes_sum_and_determinism(images: np.ndarray) -> None:
    am = ArtModel(build_model(seed=1), version="cnn-test", classes=CLASSES, arch="cnn")
    probs, embs = am.predict(images)
    assert probs.shape == (len(images), len(CLASSES)) and probs.dtype == np.float32
    assert embs.shape == (len(images), EMBEDDING_DIM) and embs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    probs2, embs2 = am.predict(images)
    np.testing.assert_array_equal(probs, probs2)
    np.testing.assert_array_equal(embs, embs2)
    # A batch of one gives the same answer as the same image inside a bigger batch.
    p1, e1 = am.predict(images[3:4])
    np.testing.assert_allclose(p1[0], probs[3], atol=1e-5)
    np.testing.assert_allclose(e1[0], embs[3], rtol=1e-4, atol=1e-4)
    p0, e0 = am.predict(images[:0])
    assert p0.shape == (0, len(CLASSES)) and e0.shape == (0, EMBEDDING_DIM)
    with pytest.raises(TypeError):
        am.predict(images.astype(np.float32))
    with pytest.raises(ValueError):
        am.predict(images[:, :100])


def test_tflite_and_keras_runtimes_agree(
    tmp_path: Path, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default TFLite runtime is a faster executor of the same float32 model, not a
    different model: both runtimes give the same classes and (to rounding) the same outputs,
    and the converted model is cached by the .keras file's digest."""
    import tempfile

    from artclf_core.model import runtime

    monkeypatch.setenv("ARTCLF_HOME", str(tmp_path / "home"))
    # Tracing writes no temporary source files (autograph's), which a task killed before its
    # atexit handlers would leave in /tmp.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    model = build_model(seed=4)
    path = save_model(model, tmp_path / "m.keras", version="cnn-rt", classes=CLASSES, arch="cnn")
    lite = ArtModel.load(path)
    keras_run = ArtModel.load(path, runtime="keras")
    assert isinstance(lite.runner, runtime.LiteRunner)
    assert isinstance(keras_run.runner, runtime.KerasRunner)
    # LiteRT's interpreter, not TensorFlow's deprecated tf.lite one (a dependency: installed).
    assert type(lite.runner._interp).__module__.startswith("ai_edge_litert")
    batch = np.concatenate([images] * 2)  # 20 images: two full chunks of 8 and a tail of 4
    p_lite, e_lite = lite.predict(batch)
    # The chunk is chosen for speed only: every image's outputs are the same bits whatever it is.
    for chunk in (1, 16, 32):
        lite.runner.chunk = chunk
        p_chunk, e_chunk = lite.predict(batch)
        np.testing.assert_array_equal(p_chunk, p_lite)
        np.testing.assert_array_equal(e_chunk, e_lite)
    lite.runner.chunk = runtime.TFLITE_CHUNK
    p_keras, e_keras = keras_run.predict(batch)
    np.testing.assert_allclose(p_lite, p_keras, atol=1e-5)
    np.testing.assert_allclose(e_lite, e_keras, rtol=1e-4, atol=1e-4)
    assert (p_lite.argmax(1) == p_keras.argmax(1)).all()
    assert not list((tmp_path / "tmp").glob("__autograph_generated_file*"))
    cached = list((tmp_path / "home" / "model-cache" / "tflite").glob("*.tflite"))
    assert len(cached) == 1
    again = ArtModel.load(path)
    mtime = cached[0].stat().st_mtime_ns
    np.testing.assert_array_equal(again.predict(batch)[0], p_lite)
    assert cached[0].stat().st_mtime_ns == mtime  # read from the cache, not converted again
    assert again._model is None  # and the Keras model was not even loaded
    assert again.model.name == lite.model.name  # still there on demand
    cached[0].write_bytes(b"not a flatbuffer")  # a damaged cache is converted again
    repaired = ArtModel.load(path)
    np.testing.assert_array_equal(repaired.predict(batch)[0], p_lite)
    assert isinstance(repaired.runner, runtime.LiteRunner)
    assert len(cached[0].read_bytes()) > 1000  # the cache holds a real model again
    monkeypatch.setenv("ARTCLF_RUNTIME", "onnx")
    with pytest.raises(ValueError, match="ARTCLF_RUNTIME"):
        runtime.runtime_name()


def test_save_load_round_trip(tmp_path: Path, images: np.ndarray) -> None:
    model = build_model(seed=2)
    version = make_version("cnn", model)
    assert re.fullmatch(r"cnn-\d{8}-[0-9a-f]{8}", version)
    assert make_version("cnn", model) == version  # the suffix identifies the weights
    classes = tuple(reversed(CLASSES))  # a non-default order must survive the round trip
    path = save_model(
        model,
        tmp_path / "m.keras",
        version=version,
        classes=classes,
        arch="cnn",
        metrics={"validation": {"accuracy": np.float64(0.5)}},
    )
    assert METADATA_MEMBER in zipfile.ZipFile(path).namelist()
    keras.saving.load_model(path, compile=False)  # still an ordinary .keras file
    before = ArtModel(model, version=version, classes=classes, arch="cnn").predict(images)
    loaded = ArtModel.load(path)
    assert loaded.version == version and loaded.classes == classes and loaded.arch == "cnn"
    assert loaded.image_size == IMAGE_SIZE
    assert loaded.metrics == {"validation": {"accuracy": 0.5}}
    after = loaded.predict(images)
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    np.testing.assert_allclose(after[1], before[1], atol=1e-5)
    assert read_metadata(path)["version"] == version
    assert default_model_path().name == "default.keras"


def test_save_and_load_refuse_inconsistent_files(tmp_path: Path) -> None:
    model = build_model(seed=0)
    with pytest.raises(ValueError):
        save_model(model, tmp_path / "m.keras", version="v", classes=("a", "b"), arch="cnn")
    plain = tmp_path / "plain.keras"
    model.save(plain)
    with pytest.raises(ValueError, match="artclf metadata"):
        ArtModel.load(plain)


def test_scan_skips_non_images_and_reads_sources(tiny_folder: Path, tmp_path: Path) -> None:
    samples = scan_labelled_folder(tiny_folder)
    assert all(s.path.suffix in (".jpg", ".png") for s in samples)
    assert {s.label for s in samples} == set(CLASSES)
    assert {s.source for s in samples if s.label == "engraving"} == {"bookA", "bookB"}
    bad = tmp_path / "bad"
    (bad / "paintings").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a class"):
        scan_labelled_folder(bad)


def test_split_is_source_disjoint_and_keeps_duplicates_together(tiny_folder: Path) -> None:
    samples = scan_labelled_folder(tiny_folder)
    train_s, val_s = split_by_source(samples, 0.3, seed=0)
    assert sorted(train_s + val_s) == sorted(samples)
    assert {s.label for s in val_s} == set(CLASSES)  # every class is validated
    for label in ("engraving", "painting", "sculpture"):
        tr = {s.source for s in train_s if s.label == label}
        va = {s.source for s in val_s if s.label == label}
        assert tr and va and not tr & va, label
    dup = {"solo__001.jpg", "solo__017.jpg"}
    sides = {s in val_s for s in samples if s.label == "iconography" and s.path.name in dup}
    assert len(sides) == 1
    assert split_by_source(samples, 0.3, seed=0) == (train_s, val_s)  # deterministic


def test_train_writes_loadable_model_and_evaluate_reports(trained: dict, tiny_folder: Path) -> None:
    path = Path(trained["model_path"])
    assert path.is_file()
    assert set(trained["report"]) == EVAL_KEYS
    assert 0.0 <= trained["report"]["label_precision_at_5"] <= 1.0
    assert trained["epochs_run"] in (1, 2) and "loss" in trained["history"]
    model = ArtModel.load(path)
    assert model.version == trained["version"] and model.classes == CLASSES
    assert model.metrics["split"]["mode"] == "source"
    report = evaluate(tiny_folder, path)
    assert set(report) == EVAL_KEYS
    assert report["n"] == len(scan_labelled_folder(tiny_folder))
    assert sum(map(sum, report["confusion"])) == report["n"]
    json.dumps(report)  # the CLI prints it with --json


def test_metrics_on_hand_made_labels() -> None:
    classes = ("a", "b", "c")
    y_true = ["a", "a", "a", "a", "b", "b", "c", "c"]
    y_pred = ["a", "a", "a", "b", "b", "a", "a", "c"]
    r = classification_report(y_true, y_pred, classes)
    assert set(r) == REPORT_KEYS
    assert r["n"] == 8 and r["classes"] == list(classes)
    assert r["accuracy"] == pytest.approx(5 / 8)
    assert r["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    assert r["confusion"] == [[3, 1, 0], [1, 1, 0], [1, 0, 1]]
    a = r["per_class"]["a"]
    assert a["precision"] == pytest.approx(3 / 5) and a["recall"] == pytest.approx(3 / 4)
    assert a["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35) and a["support"] == 4
    assert r["per_class"]["c"]["precision"] == 1.0
    # Integer labels give the same report; an absent class is left out of balanced accuracy.
    assert classification_report([0, 0, 1], [0, 1, 1], classes)["balanced_accuracy"] == 0.75
    text = format_report(r)
    assert "balanced accuracy" in text and "confusion matrix" in text
    with pytest.raises(ValueError):
        classification_report(["a", "z"], ["a", "a"], classes)


def test_sample_is_hashable_and_ordered(tiny_folder: Path) -> None:
    s = Sample(tiny_folder / "x", "painting", "src")
    assert {s: 1}[Sample(tiny_folder / "x", "painting", "src")] == 1


# ------------------------------------------------------------------ pretrained backbone


@pytest.fixture(scope="module")
def trained_backbone(tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One head epoch (backbone frozen) + one fine-tuning epoch, at 64 px."""
    out = tmp_path_factory.mktemp("backbone") / "tiny.keras"
    return train(
        tiny_folder,
        out,
        arch=BACKBONE,
        image_size=TINY,
        epochs=1,
        head_epochs=1,
        batch_size=8,
        seed=0,
        verbose=0,
    )


def test_every_architecture_name_is_known_to_each_table() -> None:
    """``archs`` is the one list the CLI and the retrain DAG offer: every name in it has an
    input size, and the closed-form and correlation subsets are names of it."""
    from artclf_core.cli.main import build_parser

    assert DEFAULT_ARCH in ARCHS
    assert set(DEFAULT_IMAGE_SIZES) == set(ARCHS)
    assert GRAM_ARCHS <= set(TEXTURE_ARCHS) <= set(ARCHS)
    parser = build_parser()
    for command in (["train", "--data", "d", "--out", "o"], ["retrain"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--arch", "no_such_arch"])
        for arch in ARCHS:
            assert parser.parse_args([*command, "--arch", arch]).arch == arch
    assert parser.parse_args(["train", "--data", "d", "--out", "o"]).arch == DEFAULT_ARCH


def test_views_are_refused_where_they_mean_nothing(tmp_path) -> None:
    """Augmented views are rows of the closed-form head: a gradient-descent architecture or
    fewer than one view is a clear error before any image is read."""
    from artclf_core.lifecycle import training

    with pytest.raises(ValueError, match="only the closed-form architectures"):
        training.train(tmp_path, tmp_path / "m.keras", arch="cnn", views=2)
    with pytest.raises(ValueError, match="views must be at least 1"):
        training.train(tmp_path, tmp_path / "m.keras", arch=DEFAULT_ARCH, views=0)


def test_backbone_builds_with_the_same_output_contract() -> None:
    assert ARCHS == (
        "cnn",
        BACKBONE,
        "efficientnet_lite0_texture",
        "efficientnet_lite1_texture",
        "efficientnet_lite1_gram",
    )
    model = build_model(seed=0, arch=BACKBONE, image_size=TINY)
    assert tuple(model.inputs[0].shape) == (None, TINY, TINY, 3)
    x = np.random.default_rng(0).integers(0, 256, (2, TINY, TINY, 3)).astype("float32")
    out = model(x, training=False)
    assert set(out) == {"probabilities", "embedding"}
    assert tuple(out["probabilities"].shape) == (2, len(CLASSES))
    assert tuple(out["embedding"].shape) == (2, EMBEDDING_DIM)
    np.testing.assert_allclose(np.sum(out["probabilities"], axis=1), 1.0, atol=1e-5)
    assert model.get_layer("embedding").activation.__name__ == "linear"
    assert model.get_layer("backbone").output.shape[-1] == 1280  # pooled features
    assert not any("random" in layer.name.lower() for layer in model.layers)
    # The cnn is unchanged: still the default, still 150 px.
    assert tuple(build_model(seed=0).inputs[0].shape) == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(arch="resnet")


def test_backbone_trains_saves_and_loads_with_its_size(
    trained_backbone: dict, tiny_folder: Path
) -> None:
    path = Path(trained_backbone["model_path"])
    meta = read_metadata(path)
    assert meta["arch"] == BACKBONE and meta["image_size"] == TINY
    training = meta["metrics"]["training"]
    assert training["phase_epochs"] == [1, 1] and training["fine_tune_stages"] == 2
    assert set(trained_backbone["report"]) == EVAL_KEYS
    assert trained_backbone["version"].startswith(f"{BACKBONE}-")

    model = ArtModel.load(path)
    assert model.arch == BACKBONE and model.image_size == TINY and model.classes == CLASSES
    from artclf_core.lifecycle.dataset import load_images

    x = load_images(scan_labelled_folder(tiny_folder)[:6], size=TINY)
    assert x.shape == (6, TINY, TINY, 3) and x.dtype == np.uint8
    probs, embs = model.predict(x)
    assert probs.shape == (6, len(CLASSES)) and embs.shape == (6, EMBEDDING_DIM)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x)[0], probs)  # deterministic inference
    with pytest.raises(ValueError):
        model.predict(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))


def test_save_model_records_the_real_input_size(tmp_path: Path) -> None:
    model = build_model(seed=0, arch="cnn", image_size=96)
    path = save_model(model, tmp_path / "m.keras", version="v", classes=CLASSES, arch="cnn")
    assert read_metadata(path)["image_size"] == 96
    assert ArtModel.load(path).image_size == 96
    with pytest.raises(ValueError, match="input"):
        ArtModel(model, version="v", classes=CLASSES, arch="cnn", image_size=IMAGE_SIZE)


def test_augmentation_is_reproducible_and_stays_in_range() -> None:
    import tensorflow as tf

    img = tf.constant(np.random.default_rng(1).integers(0, 256, (TINY, TINY, 3)), tf.uint8)
    seed = tf.constant([3, 4], tf.int64)
    a = augment_image(img, seed).numpy()
    assert a.shape == (TINY, TINY, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, augment_image(img, seed).numpy())
    outs = [augment_image(img, tf.constant([i, 0], tf.int64)).numpy() for i in range(12)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    # Some of the draws are greyscale (all channels equal).
    grey = [np.allclose(o[..., 0], o[..., 1]) and np.allclose(o[..., 1], o[..., 2]) for o in outs]
    assert any(grey) and not all(grey)


def test_label_precision_at_k_on_hand_made_embeddings() -> None:
    emb = np.array([[1, 0], [1, 0.2], [0, 1], [0.2, 1], [1, 1.1]], dtype=np.float32)
    labels = ["a", "a", "b", "b", "a"]
    # k=1: every item's nearest neighbour shares its label except item 4's (item 3).
    assert label_precision_at_k(emb, labels, k=1) == pytest.approx(4 / 5)
    # k=2: items 0, 1 -> 2/2; items 2, 3, 4 -> 1/2 each (item 4 is near both clusters).
    assert label_precision_at_k(emb, labels, k=2) == pytest.approx((1 + 1 + 0.5 * 3) / 5)
    # Cosine: scaling a row changes nothing; the item itself is never its own neighbour.
    scaled = emb * np.array([[3], [0.5], [7], [1], [2]], dtype=np.float32)
    assert label_precision_at_k(scaled, labels, k=2) == pytest.approx(0.7)
    everyone = (0.5 + 0.5 + 0.25 + 0.25 + 0.5) / 5
    assert label_precision_at_k(emb, labels, k=4) == pytest.approx(everyone)
    assert label_precision_at_k(emb, labels, k=50) == pytest.approx(everyone)  # clipped
    assert label_precision_at_k(emb[:1], labels[:1]) == 0.0
    with pytest.raises(ValueError):
        label_precision_at_k(emb, labels[:3])


def test_evaluate_reports_by_source_and_precision(
    trained_backbone: dict, tiny_folder: Path
) -> None:
    report = evaluate(tiny_folder, trained_backbone["model_path"])
    assert set(report) == EVAL_KEYS
    json.dumps(report)
    samples = scan_labelled_folder(tiny_folder)
    sources = report["by_source"]["sources"]
    assert set(sources) == {f"{s.label}/{s.source}" for s in samples}
    eng = sources["engraving/bookA"]
    assert set(eng) == {"label", "source", "n", "accuracy", "predicted", "trained_on"}
    assert eng["n"] == 5 and sum(eng["predicted"].values()) == 5
    assert sum(v["n"] for v in sources.values()) == report["n"]
    # The model's stored split says which sources it learnt from.
    split = read_metadata(Path(trained_backbone["model_path"]))["metrics"]["split"]["classes"]
    for key, info in sources.items():
        assert info["trained_on"] == (info["source"] in split[info["label"]]["train"]), key
    per_class = report["by_source"]["per_class"]
    assert set(per_class) == set(CLASSES)
    assert set(per_class["painting"]) == {
        "sources",
        "n",
        "mean_source_accuracy",
        "worst_source",
        "worst_accuracy",
        "unseen_sources",
        "unseen_source_accuracy",
    }
    assert 0.0 <= report["label_precision_at_5"] <= 1.0
    text = format_report(report)
    assert "label precision@5" in text and "engraving/bookA" in text


def test_model_cache_follows_artclf_cache_dir(tmp_path, monkeypatch):
    """Containers point ARTCLF_CACHE_DIR at a volume; without it the cache is in the home."""
    from artclf_core.model import files

    monkeypatch.setenv("ARTCLF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARTCLF_CACHE_DIR", raising=False)
    assert files.cache_dir() == tmp_path / "home" / "model-cache"
    monkeypatch.setenv("ARTCLF_CACHE_DIR", str(tmp_path / "volume"))
    assert files.cache_dir() == tmp_path / "volume"
    a, b = (
        files.temporary_name(tmp_path / "m.keras"),
        files.temporary_name(tmp_path / "m.keras"),
    )
    assert a != b and a.parent == tmp_path and a.name.startswith(".m.keras.")


def test_inference_threads_share_the_cores_between_concurrent_tasks(monkeypatch):
    """Cores divided by the model-running tasks at once, at least one; an explicit count wins
    (issue 32: a second XNNPACK thread costs more CPU than it saves when tasks share cores)."""
    from artclf_core.model.runtime import inference_threads

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("ARTCLF_INFER_THREADS", raising=False)
    monkeypatch.delenv("ARTCLF_CONCURRENT_TASKS", raising=False)
    assert inference_threads() == cores  # the CLI: alone on the machine
    monkeypatch.setenv("ARTCLF_CONCURRENT_TASKS", "2")
    assert inference_threads() == max(1, cores // 2)
    monkeypatch.setenv("ARTCLF_CONCURRENT_TASKS", str(cores * 4))
    assert inference_threads() == 1
    monkeypatch.setenv("ARTCLF_INFER_THREADS", "3")
    assert inference_threads() == 3
