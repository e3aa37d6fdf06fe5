"""Embedding atlas (catalogue.atlas): PCA projection, stratified sampling and the standalone
HTML page, on synthetic embeddings (no services, no TensorFlow)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from artclf_core import CLASSES, EMBEDDING_DIM
from artclf_core.catalogue.atlas import (
    atlas_path_for,
    project,
    render_html,
    sample_indices,
    write_atlas,
)


def _clusters(n: int, seed: int = 0, weights=(0.3, 0.2, 0.01, 0.39, 0.1)):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(CLASSES), EMBEDDING_DIM))
    y = rng.choice(len(CLASSES), size=n, p=weights)
    x = centers[y] + 0.5 * rng.normal(size=(n, EMBEDDING_DIM))
    return x.astype(np.float32), [CLASSES[i] for i in y]


class _Scripts(HTMLParser):
    """Collects each <script>'s attributes and text the way a browser splits the page."""

    def __init__(self):
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self._attrs: dict | None = None
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._attrs, self._text = dict(attrs), ""

    def handle_data(self, data):
        if self._attrs is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "script" and self._attrs is not None:
            self.scripts.append((self._attrs, self._text))
            self._attrs = None


def _parse(page: str) -> tuple[_Scripts, dict]:
    p = _Scripts()
    p.feed(page)
    p.close()
    data = [text for attrs, text in p.scripts if attrs.get("id") == "atlas-data"]
    assert len(data) == 1
    return p, json.loads(data[0])


# --- projection ---------------------------------------------------------------------------


def test_project_shapes_and_determinism():
    x, _ = _clusters(400)
    coords, ratios = project(x)
    assert coords.shape == (400, 3) and ratios.shape == (3,)
    again, ratios2 = project(x.copy())
    np.testing.assert_array_equal(coords, again)
    np.testing.assert_array_equal(ratios, ratios2)
    assert np.all(ratios >= 0) and ratios.sum() <= 1 + 1e-9
    assert np.all(np.diff(ratios) <= 1e-12)  # decreasing
    c2, r2 = project(x, dims=2)
    assert c2.shape == (400, 2)
    np.testing.assert_allclose(np.abs(c2), np.abs(coords[:, :2]), atol=1e-9)
    np.testing.assert_allclose(r2, ratios[:2])
    # all axes together explain everything
    full = project(x, dims=EMBEDDING_DIM)[1]
    assert full.sum() == pytest.approx(1.0)


def test_project_sign_convention_is_stable():
    x, _ = _clusters(300, seed=3)
    coords, _ = project(x)
    perm = np.random.default_rng(7).permutation(len(x))
    # A row permutation changes the SVD's internal signs freely; the convention must not.
    np.testing.assert_allclose(project(x[perm])[0], coords[perm], atol=1e-9)
    # Rows are L2-normalised first (cosine search): rescaling a row does not move it.
    scaled = x * np.random.default_rng(8).uniform(0.1, 10, size=(len(x), 1))
    np.testing.assert_allclose(project(scaled)[0], coords, atol=1e-9)
    # The axis is oriented by its largest loading (here e0): +e0 lies on the positive side.
    pair = np.array([[1.0, 0.1, 0.0], [-1.0, 0.1, 0.0]])
    c, r = project(pair, dims=1)
    assert c[0, 0] > 0 > c[1, 0] and r[0] == pytest.approx(1.0)
    np.testing.assert_allclose(project(pair[::-1], dims=1)[0], c[::-1])


def test_project_edge_cases():
    c, r = project(np.zeros((0, EMBEDDING_DIM)))
    assert c.shape == (0, 3) and r.tolist() == [0, 0, 0]
    c, r = project(np.ones((1, EMBEDDING_DIM)))
    assert c.shape == (1, 3) and not c.any() and not r.any()
    c, r = project(np.eye(2, EMBEDDING_DIM))  # two points: one informative axis
    assert c.shape == (2, 3) and np.all(c[:, 1:] == 0)
    assert c[0, 0] == pytest.approx(-c[1, 0]) and c[0, 0] != 0
    assert r[0] == pytest.approx(1.0) and r[1] == r[2] == 0
    c, r = project(np.tile(np.arange(1.0, 9.0), (10, 1)))  # constant data
    assert c.shape == (10, 3) and not c.any() and not r.any()
    c, r = project(np.random.default_rng(0).normal(size=(6, 2)))  # D < dims
    assert c.shape == (6, 3) and np.all(c[:, 2] == 0) and r[2] == 0
    with pytest.raises(ValueError):
        project(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError):
        project(np.ones((2, 2, 2)))


# --- sampling -----------------------------------------------------------------------------


def test_sample_indices_stratified_and_deterministic():
    _, labels = _clusters(5000, weights=(0.5, 0.3, 0.002, 0.15, 0.048))
    idx = sample_indices(labels, max_points=1000, seed=0)
    assert len(idx) == 1000 and len(set(idx.tolist())) == 1000
    assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64
    picked = [labels[i] for i in idx]
    assert set(picked) == set(labels)
    # the rare class (about 10 items) is kept whole
    assert picked.count("iconography") == labels.count("iconography")
    # the large classes stay roughly in proportion
    assert picked.count("drawings") > picked.count("engraving") > picked.count("painting")
    np.testing.assert_array_equal(idx, sample_indices(list(labels), max_points=1000, seed=0))
    assert not np.array_equal(idx, sample_indices(labels, max_points=1000, seed=1))


def test_sample_indices_small_and_degenerate():
    assert sample_indices([], max_points=10).tolist() == []
    assert sample_indices(["a", "b"], max_points=10).tolist() == [0, 1]
    # fewer slots than labels: still one point of every label
    labels = ["a"] * 50 + ["b"] * 50 + ["c"]
    idx = sample_indices(labels, max_points=2)
    assert sorted(labels[i] for i in idx) == ["a", "b", "c"]
    with pytest.raises(ValueError):
        sample_indices(labels, max_points=0)


# --- HTML ---------------------------------------------------------------------------------


def test_write_atlas_standalone_page(tmp_path):
    x, labels = _clusters(600)
    hover = [f"artwork {i} · {lab}" for i, lab in enumerate(labels)]
    path = tmp_path / "models" / "artclf-v2.keras"
    out = atlas_path_for(path)
    assert out.name == "artclf-v2.atlas.html"
    summary = write_atlas(out, x, labels, hover, title="artclf v2", subtitle="test", max_points=500)
    assert summary["path"] == str(out) and out.is_file()
    assert summary["n_points"] == 500 and summary["n_total"] == 600
    assert sum(summary["label_counts"].values()) == 500
    assert summary["label_totals"] == {c: labels.count(c) for c in CLASSES if c in labels}
    assert 0 < sum(summary["explained_variance"]) <= 1
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left

    page = out.read_text(encoding="utf-8")
    parser, data = _parse(page)
    # standalone: no external resource at all
    assert "http://" not in page and "https://" not in page
    for tag, attrs in parser.tags:
        assert "src" not in attrs, tag
        assert not re.match(r"\s*(\w+:)?//", attrs.get("href") or ""), tag
    assert [a.get("type") for a, _ in parser.scripts] == ["application/json", None]
    assert "<canvas" in page and "<title>artclf v2</title>" in page
    # the embedded data is the plotted sample
    assert data["dims"] == 3
    assert len(data["x"]) == len(data["y"]) == len(data["z"]) == len(data["l"]) == 500
    assert data["labels"] == list(summary["label_counts"])
    assert data["counts"] == list(summary["label_counts"].values())
    assert len(data["colors"]) == len(set(data["colors"])) == len(data["labels"])
    assert data["n_total"] == 600 and len(data["explained"]) == 3
    assert max(max(map(abs, data[k])) for k in "xyz") == pytest.approx(1.0)
    idx = sample_indices(labels, max_points=500)
    assert data["h"] == [hover[i] for i in idx]
    assert [data["labels"][c] for c in data["l"]] == [labels[i] for i in idx]


def test_hover_text_cannot_break_out_of_the_script(tmp_path):
    evil = [
        "</script><script>alert(1)</script>",
        "<!-- <script>",
        "</SCRIPT >&amp; \u2028 \"quotes\" 'single'",
        "__DATA__ __TITLE__",
    ]
    coords = np.arange(12, dtype=float).reshape(4, 3)
    page = render_html(
        coords,
        ["painting", "x</script>", "painting", "sculpture"],
        evil,
        title="</title><script>t</script>",
        subtitle="<b>s</b>",
    )
    assert page.lower().count("</script") == 2  # the data tag's and the code tag's own
    assert "<script>t" not in page and "<b>s</b>" not in page
    parser, data = _parse(page)
    assert len(parser.scripts) == 2
    assert data["h"] == evil
    assert "x</script>" in data["labels"]


def test_edge_cases_and_2d(tmp_path):
    for n in (0, 1, 2):
        x, labels = _clusters(n)
        s = write_atlas(tmp_path / f"a{n}.html", x, labels, [str(i) for i in range(n)], title="t")
        assert s["n_points"] == s["n_total"] == n
        _, data = _parse((tmp_path / f"a{n}.html").read_text(encoding="utf-8"))
        assert len(data["x"]) == len(data["z"]) == len(data["h"]) == n
        assert all(np.isfinite(data["x"]))
    x, labels = _clusters(50)
    s = write_atlas(tmp_path / "flat.html", x, labels, None, title="flat", dims=2)
    assert len(s["explained_variance"]) == 2
    _, data = _parse((tmp_path / "flat.html").read_text(encoding="utf-8"))
    assert data["dims"] == 2 and "z" not in data and len(data["x"]) == 50
    assert data["h"][0] == f"#0 {labels[0]}"  # default hover text
    with pytest.raises(ValueError):
        write_atlas(tmp_path / "bad.html", x, labels, None, title="t", dims=4)
    with pytest.raises(ValueError):
        write_atlas(tmp_path / "bad.html", x, labels[:-1], None, title="t")
    with pytest.raises(ValueError):
        render_html(np.zeros((2, 3)), ["a"], ["x", "y"], title="t")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_inline_javascript_parses(tmp_path):
    page = render_html(np.zeros((1, 3)), ["painting"], ["x"], title="t")
    code = next(text for attrs, text in _parse(page)[0].scripts if "type" not in attrs)
    (tmp_path / "atlas.js").write_text(code, encoding="utf-8")
    subprocess.run(["node", "--check", str(tmp_path / "atlas.js")], check=True, timeout=60)
    assert code.count("\n") < 200
