"""Embedding atlas: a standalone, interactive HTML projection of the catalogue's embeddings.

For a model version, ML owners want to *see* whether the 128-d embeddings separate the media
(drawings, engraving, iconography, painting, sculpture). The prototype did this with a 3-D
scatter plot of the embeddings coloured by class; this module produces the same picture as one
self-contained HTML file (inline CSS and JS, data embedded as JSON, no CDN, no network) that
opens from disk in any browser, offline, and can be kept next to the model artifact.

Why PCA (numpy SVD) rather than UMAP or t-SNE:

* deterministic: the same embeddings give the same picture (with a fixed sign convention, see
  :func:`project`), so atlases of two model versions or two runs can be compared;
* fast: an economy SVD of 20,000 x 128 takes a fraction of a second on one CPU core;
* no extra dependency: numpy only (no scikit-learn, umap-learn, plotly or TensorFlow import),
  so the atlas can be built wherever the catalogue can be read.

Limits: PCA is linear. It shows the directions of largest variance, which need not be the
directions that separate the classes, so classes that overlap here may still be separable by a
non-linear method (or by the classifier itself); the explained-variance ratios printed on the
axes say how much of the picture is missing. UMAP or t-SNE would usually separate clusters
more clearly, but they add dependencies, are stochastic (seed- and version-dependent layouts)
and distort global distances, which makes comparisons between versions harder to read.

Above ``max_points`` (default 20,000) the atlas shows a deterministic stratified sample
(:func:`sample_indices`) so that the page stays responsive and small classes stay visible.
"""

from __future__ import annotations

import html
import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from artclf_core import CLASSES

#: Default cap on the number of points drawn (a canvas handles this smoothly).
MAX_POINTS = 20_000
#: Okabe-Ito colours (colour-blind safe), one per product class, in CLASSES order.
CLASS_COLORS: dict[str, str] = dict(
    zip(CLASSES, ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#CC79A7"), strict=True)
)
#: Colours for labels that are not product classes (cycled).
EXTRA_COLORS = ("#0072B2", "#D55E00", "#BBBBBB", "#8DD3C7", "#FB8072", "#B3DE69", "#BC80BD")


def atlas_path_for(model_path: str | os.PathLike[str]) -> Path:
    """Where the atlas of a model lives: next to the artifact, ``<stem>.atlas.html``."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.atlas.html")


def project(embeddings: np.ndarray, dims: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """PCA of ``embeddings`` (N, D) to ``dims`` dimensions with numpy's SVD.

    Rows are L2-normalised before centring because similarity search on these embeddings is
    cosine (pgvector ``<=>``): only the direction of an embedding matters, so its norm should
    not dominate the variance that PCA explains. Zero rows stay zero.

    Sign convention: each principal axis is oriented so that its largest-magnitude loading is
    positive (SVD alone may flip signs between runs, row orders or LAPACK builds), so the same
    data always gives the same picture.

    Returns ``(coords, explained)``: coords (N, dims) float64 and the explained variance ratio
    of each axis (dims,), which sum to at most 1. Degenerate inputs are not errors: with N == 0
    the coords are empty; with fewer than ``dims`` informative directions (N <= dims, D < dims,
    constant data) the missing axes are zero-filled and explain 0.
    """
    if dims < 1:
        raise ValueError("dims must be >= 1")
    x = np.asarray(embeddings, dtype=np.float64)
    n = int(x.shape[0]) if x.ndim >= 1 else 0
    coords = np.zeros((n, dims))
    explained = np.zeros(dims)
    if x.size == 0:
        return coords, explained
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    xc = x - x.mean(axis=0)
    total = float(np.sum(xc * xc))
    if total <= 1e-24 * n:  # constant data (or a single point): nothing to project
        return coords, explained
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    # Axes that explain (numerically) nothing, e.g. beyond the rank N - 1, stay zero.
    k = min(dims, int(np.count_nonzero(s**2 > 1e-12 * total)))
    comps = vt[:k]
    lead = comps[np.arange(k), np.argmax(np.abs(comps), axis=1)]
    comps = comps * np.where(lead < 0, -1.0, 1.0)[:, None]
    coords[:, :k] = xc @ comps.T
    explained[:k] = s[:k] ** 2 / total
    return coords, explained


def _as_labels(labels: Sequence[Any] | np.ndarray) -> list[str]:
    return ["unlabelled" if v is None else str(v) for v in labels]


def _allocate(counts: np.ndarray, budget: int) -> np.ndarray:
    """Per-label quotas summing to ``budget`` (< counts.sum()): every label first gets up to
    ``budget // (2 * labels)`` points (all of a small class), the rest is shared in proportion
    to what each label has left (largest remainder, exact integer arithmetic)."""
    k = len(counts)
    base = np.minimum(counts, max(1, budget // (2 * k)))
    rest = budget - int(base.sum())
    if rest <= 0:
        return base
    cap = counts - base
    num = rest * cap
    quota, rem = np.divmod(num, int(cap.sum()))
    short = rest - int(quota.sum())
    if short > 0:
        quota[np.lexsort((np.arange(k), -rem))[:short]] += 1  # ties: first label first
    return base + np.minimum(quota, cap)


def sample_indices(
    labels: Sequence[Any] | np.ndarray, max_points: int = MAX_POINTS, seed: int = 0
) -> np.ndarray:
    """Indices (sorted, int64) of a deterministic stratified sample of at most ``max_points``.

    With N <= max_points every index is returned. Otherwise each label keeps a guaranteed share
    (up to ``max_points // (2 * n_labels)`` points, so a rare class such as iconography is kept
    whole) and the rest of the budget follows the label proportions. Every label is always
    represented: if ``max_points`` is smaller than the number of labels, one point per label.
    The same labels, ``max_points`` and ``seed`` always give the same indices.
    """
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    lab = _as_labels(labels)
    n = len(lab)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    names, inverse = np.unique(np.asarray(lab, dtype=str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(names)).astype(np.int64)
    quota = _allocate(counts, max_points)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(len(names)):
        members = np.flatnonzero(inverse == c)
        if quota[c] < len(members):
            members = rng.choice(members, size=int(quota[c]), replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _label_order(labels: Sequence[str]) -> list[str]:
    """Product classes in CLASSES order, then any other label alphabetically."""
    present = set(labels)
    return [c for c in CLASSES if c in present] + sorted(present - set(CLASSES))


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: ``<``, ``>`` and ``&`` are written as \\u escapes
    (so no ``</script>`` or ``<!--`` can appear), as are U+2028/U+2029."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate({ord(c): f"\\u{ord(c):04x}" for c in ("<", ">", "&", "\u2028", "\u2029")})


def render_html(
    coords: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    hover: Sequence[str] | None,
    *,
    title: str,
    subtitle: str = "",
    explained: Sequence[float] | np.ndarray | None = None,
    n_total: int | None = None,
) -> str:
    """A standalone HTML page drawing ``coords`` (N, 2) or (N, 3) as a scatter on a canvas.

    ``hover[i]`` is the tooltip text of point i (shown as text, never as HTML; newlines are
    kept); ``explained`` the variance ratio of each axis; ``n_total`` the size of the
    population the points were sampled from (shown as "N of n_total points").
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] not in (2, 3):
        raise ValueError(f"coords must have shape (N, 2) or (N, 3), got {xy.shape}")
    if not np.all(np.isfinite(xy)):
        raise ValueError("coords contain NaN or infinite values")
    n, dims = xy.shape
    lab = _as_labels(labels)
    texts = [f"#{i} {v}" for i, v in enumerate(lab)] if hover is None else [str(h) for h in hover]
    if len(lab) != n or len(texts) != n:
        raise ValueError(f"{n} points but {len(lab)} labels and {len(texts)} hover texts")
    names = _label_order(lab)
    index = {name: i for i, name in enumerate(names)}
    codes = [index[v] for v in lab]
    extra = iter(EXTRA_COLORS * (len(names) // len(EXTRA_COLORS) + 1))
    scale = float(np.max(np.abs(xy))) if n else 0.0
    unit = np.round(xy / scale, 4) if scale > 0 else np.zeros_like(xy)  # one scale: no distortion
    data: dict[str, Any] = {
        "dims": dims,
        "labels": names,
        "colors": [CLASS_COLORS.get(name) or next(extra) for name in names],
        "counts": np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(names)).tolist(),
        "explained": None if explained is None else [round(float(v), 6) for v in explained],
        "n_total": n if n_total is None else int(n_total),
        "x": unit[:, 0].tolist(),
        "y": unit[:, 1].tolist(),
        "l": codes,
        "h": texts,
    }
    if dims == 3:
        data["z"] = unit[:, 2].tolist()
    values = {
        "TITLE": html.escape(title),
        "SUBTITLE": html.escape(subtitle),
        "JS": _JS,
        "DATA": _script_json(data),
    }
    # One pass, so a title or hover text that contains a placeholder is never substituted.
    return re.sub(r"__(TITLE|SUBTITLE|JS|DATA)__", lambda m: values[m.group(1)], _TEMPLATE)


def write_atlas(
    path: str | os.PathLike[str],
    embeddings: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    hover: Sequence[str] | None,
    *,
    title: str,
    subtitle: str = "",
    dims: int = 3,
    max_points: int = MAX_POINTS,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample, project and render the atlas to ``path`` (atomically: a temporary file in the
    same folder, then ``os.replace``, so a reader never sees half a page).

    The PCA is fitted on the plotted (sampled) points, so the picture and the explained
    variance describe the same points. Returns a summary: path, n_points, n_total, dims,
    explained_variance, label_counts (plotted) and label_totals (before sampling).
    """
    if dims not in (2, 3):
        raise ValueError("dims must be 2 or 3")
    emb = np.asarray(embeddings, dtype=np.float64)
    lab = _as_labels(labels)
    n_total = len(lab)
    texts = None if hover is None else list(hover)
    n_emb = emb.shape[0] if emb.ndim else 0
    if n_emb != n_total or (texts is not None and len(texts) != n_total):
        raise ValueError("embeddings, labels and hover must have the same length")
    idx = sample_indices(lab, max_points=max_points, seed=seed)
    coords, explained = project(emb[idx] if n_total else emb, dims=dims)
    picked = [lab[i] for i in idx]
    page = render_html(
        coords,
        picked,
        None if texts is None else [texts[i] for i in idx],
        title=title,
        subtitle=subtitle,
        explained=explained,
        n_total=n_total,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would make the atlas unreadable to others.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    order = _label_order(lab)
    return {
        "path": str(out),
        "n_points": len(idx),
        "n_total": n_total,
        "dims": dims,
        "explained_variance": [float(v) for v in explained],
        "label_counts": {name: picked.count(name) for name in order},
        "label_totals": {name: lab.count(name) for name in order},
    }


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
html, body { margin: 0; height: 100%; background: #15171c; color: #e6e6e6;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
body { display: flex; flex-direction: column; }
header { padding: 10px 16px 6px; }
h1 { font-size: 18px; margin: 0; }
header p { margin: 2px 0; color: #a8adb7; }
main { position: relative; flex: 1; min-height: 300px; }
canvas { position: absolute; inset: 0; width: 100%; height: 100%; cursor: grab;
  touch-action: none; }
canvas:active { cursor: grabbing; }
#legend { position: absolute; top: 10px; right: 12px; display: flex; flex-direction: column;
  gap: 2px; background: rgba(21, 23, 28, 0.85); padding: 8px; border-radius: 6px; }
#legend button { all: unset; cursor: pointer; padding: 2px 6px; border-radius: 4px; }
#legend button:hover { background: #2a2e37; }
#legend button.off { opacity: 0.35; text-decoration: line-through; }
.sw { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 7px; }
#tip { position: fixed; pointer-events: none; max-width: 420px; white-space: pre-line;
  background: #fff; color: #111; padding: 5px 8px; border-radius: 4px; font-size: 13px;
  box-shadow: 0 2px 8px rgba(0, 0, 0, 0.5); overflow-wrap: anywhere; }
</style>
</head>
<body>
<header>
<h1>__TITLE__</h1>
<p>__SUBTITLE__</p>
<p id="stats"></p>
<p id="help">drag: rotate &middot; shift-drag: pan &middot; wheel: zoom &middot;
double-click: reset &middot; legend: click to hide/show, shift-click to show only one</p>
</header>
<main>
<canvas id="plot"></canvas>
<div id="legend"></div>
<noscript>This atlas needs JavaScript.</noscript>
</main>
<div id="tip" hidden></div>
<script type="application/json" id="atlas-data">__DATA__</script>
<script>
__JS__
</script>
</body>
</html>
"""

_JS = """(() => {
  "use strict";
  const D = JSON.parse(document.getElementById("atlas-data").textContent);
  const cv = document.getElementById("plot"), ctx = cv.getContext("2d");
  const tip = document.getElementById("tip"), legend = document.getElementById("legend");
  const n = D.l.length, is3d = D.dims === 3, L = D.l;
  const hidden = D.labels.map(() => false);
  const sx = new Float32Array(n), sy = new Float32Array(n), depth = new Float32Array(n);
  const order = new Uint32Array(n).map((_, i) => i);  // drawing order, far to near
  const home = { yaw: 0.6, pitch: 0.35, zoom: 1, panX: 0, panY: 0 };
  const view = Object.assign({}, home);
  let W = 0, H = 0, dpr = 1, hover = -1, queued = false, drag = null, rot = null;

  // Rotation (yaw about the vertical axis, then pitch), mild perspective, then pixels.
  function setup() {
    const cyaw = Math.cos(view.yaw), syaw = Math.sin(view.yaw);
    const cp = Math.cos(view.pitch), sp = Math.sin(view.pitch);
    rot = { cyaw, syaw, cp, sp, scale: 0.42 * Math.min(W, H) * view.zoom,
            ox: W / 2 + view.panX, oy: H / 2 + view.panY };
  }
  function proj(x, y, z) {  // -> [screen x, screen y, depth (larger is nearer)]
    const r = rot;
    if (!is3d) return [r.ox + x * r.scale, r.oy - y * r.scale, 0];
    const x1 = r.cyaw * x + r.syaw * z, z1 = -r.syaw * x + r.cyaw * z;
    const y1 = r.cp * y - r.sp * z1, z2 = r.sp * y + r.cp * z1;
    const p = 4 / (4 - z2);
    return [r.ox + x1 * r.scale * p, r.oy - y1 * r.scale * p, z2];
  }
  function transform() {
    setup();
    for (let i = 0; i < n; i++) {
      const q = proj(D.x[i], D.y[i], is3d ? D.z[i] : 0);
      sx[i] = q[0]; sy[i] = q[1]; depth[i] = q[2];
    }
    if (is3d) order.sort((a, b) => depth[a] - depth[b]);
  }

  function drawAxes() {
    const o = proj(0, 0, 0);
    ctx.strokeStyle = "#4a505c"; ctx.fillStyle = "#8a91a0"; ctx.lineWidth = 1;
    ctx.font = "12px system-ui, sans-serif";
    for (let k = 0; k < D.dims; k++) {
      const e = proj(k === 0 ? 1.05 : 0, k === 1 ? 1.05 : 0, k === 2 ? 1.05 : 0);
      ctx.beginPath(); ctx.moveTo(o[0], o[1]); ctx.lineTo(e[0], e[1]); ctx.stroke();
      ctx.fillText("PC" + (k + 1), e[0] + 4, e[1] - 4);
    }
  }

  function draw() {
    queued = false;
    transform();
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    drawAxes();
    const s = Math.max(1.5, Math.min(7, 2.5 * Math.sqrt(view.zoom))), h = s / 2;
    ctx.globalAlpha = 0.85;
    let last = -1;
    for (let k = 0; k < n; k++) {
      const i = order[k], c = L[i];
      if (hidden[c]) continue;
      if (c !== last) { ctx.fillStyle = D.colors[c]; last = c; }
      ctx.fillRect(sx[i] - h, sy[i] - h, s, s);
    }
    ctx.globalAlpha = 1;
    if (hover >= 0 && !hidden[L[hover]]) {
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 2;
      ctx.strokeRect(sx[hover] - h - 3, sy[hover] - h - 3, s + 6, s + 6);
    }
  }
  function redraw() {
    if (!queued) { queued = true; requestAnimationFrame(draw); }
  }
  function resize() {
    const r = cv.getBoundingClientRect();
    dpr = window.devicePixelRatio || 1; W = r.width; H = r.height;
    cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr);
    redraw();
  }

  // Nearest visible point within 7 px of (mx, my); on ties the nearer (front) one wins.
  function pick(mx, my) {
    let best = -1, bestD = 49;
    for (let k = n - 1; k >= 0; k--) {
      const i = order[k];
      if (hidden[L[i]]) continue;
      const dx = sx[i] - mx, dy = sy[i] - my, d = dx * dx + dy * dy;
      if (d < bestD) { best = i; bestD = d; }
    }
    return best;
  }
  function showTip(i, e) {
    if (i < 0) { tip.hidden = true; return; }
    tip.textContent = D.h[i];  // text, never HTML
    tip.hidden = false;
    const r = tip.getBoundingClientRect();
    tip.style.left = Math.max(0, Math.min(e.clientX + 14, innerWidth - r.width - 4)) + "px";
    tip.style.top = Math.max(0, Math.min(e.clientY + 14, innerHeight - r.height - 4)) + "px";
  }

  cv.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, pan: !is3d || e.shiftKey };
    cv.setPointerCapture(e.pointerId);
    showTip(-1, e);
  });
  cv.addEventListener("pointermove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX; drag.y = e.clientY;
      if (drag.pan) { view.panX += dx; view.panY += dy; } else {
        view.yaw += dx * 0.01;
        view.pitch = Math.max(-1.57, Math.min(1.57, view.pitch + dy * 0.01));
      }
      redraw();
      return;
    }
    const r = cv.getBoundingClientRect(), i = pick(e.clientX - r.left, e.clientY - r.top);
    if (i !== hover) { hover = i; redraw(); }
    showTip(i, e);
  });
  const stop = () => { drag = null; };
  cv.addEventListener("pointerup", stop);
  cv.addEventListener("pointercancel", stop);
  cv.addEventListener("pointerleave", (e) => { hover = -1; showTip(-1, e); redraw(); });
  cv.addEventListener("wheel", (e) => {  // zoom about the cursor
    e.preventDefault();
    const r = cv.getBoundingClientRect(), f = Math.exp(-e.deltaY * 0.0015);
    const z = Math.max(0.2, Math.min(200, view.zoom * f)), g = z / view.zoom;
    const mx = e.clientX - r.left - W / 2, my = e.clientY - r.top - H / 2;
    view.panX = mx - (mx - view.panX) * g; view.panY = my - (my - view.panY) * g;
    view.zoom = z;
    redraw();
  }, { passive: false });
  cv.addEventListener("dblclick", () => { Object.assign(view, home); redraw(); });

  D.labels.forEach((name, c) => {
    const item = document.createElement("button"), sw = document.createElement("span");
    item.type = "button";
    sw.className = "sw"; sw.style.background = D.colors[c];
    item.append(sw, name + " (" + D.counts[c] + ")");
    item.addEventListener("click", (e) => {
      if (e.shiftKey) hidden.forEach((_, k) => { hidden[k] = k !== c; });
      else hidden[c] = !hidden[c];
      legend.querySelectorAll("button").forEach((b, k) => b.classList.toggle("off", hidden[k]));
      if (hover >= 0 && hidden[L[hover]]) { hover = -1; tip.hidden = true; }
      redraw();
    });
    legend.append(item);
  });

  const dot = " \\u00b7 ";
  const pts = (k) => k + (k === 1 ? " point" : " points");
  const shown = n === D.n_total ? pts(n) : n + " of " + pts(D.n_total) + " (stratified sample)";
  const axes = !D.explained ? "PCA axes" : D.explained
    .map((v, k) => "PC" + (k + 1) + " " + (100 * v).toFixed(1) + "%")
    .join(dot) + " of variance (PCA of L2-normalised embeddings)";
  document.getElementById("stats").textContent = shown + dot + axes;
  if (window.ResizeObserver) new ResizeObserver(resize).observe(cv);
  else window.addEventListener("resize", resize);
  resize();
})();"""
