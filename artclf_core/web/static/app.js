// The Artworks page: plain JavaScript, no framework, no CDN (works offline).
// Every URL is relative to where the page is mounted (Airflow serves it under /artclf/),
// so it also works behind a reverse proxy with a path prefix.
"use strict";

const BASE = new URL("..", document.currentScript.src); // .../artclf/
const AIRFLOW = new URL("..", BASE); // the Airflow UI, for links to DAG runs
const CLASSES = ["drawings", "engraving", "iconography", "painting", "sculpture"];
const view = document.getElementById("view");
let me = { user: "", can_edit: false };

// ------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// Node.replaceChildren writes null as the text "null": every view goes through this instead.
function show(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false && c !== ""));
}

async function api(path, options = {}) {
  const resp = await fetch(new URL("api/" + path, BASE), { credentials: "same-origin", ...options });
  if (resp.status === 401) throw new Error("not logged in to Airflow: log in and reload");
  const body = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (!resp.ok) {
    const d = body?.detail;
    throw new Error(typeof d === "string" ? d : d?.message ? `${d.reason}: ${d.message}` : JSON.stringify(d ?? resp.status));
  }
  return body;
}

const thumb = (id) => new URL(`api/artworks/${id}/thumbnail`, BASE).href;
const pct = (p) => (p === null || p === undefined ? "–" : `${(100 * p).toFixed(1)} %`);
const when = (t) => (t ? new Date(t).toLocaleString() : "");

function fail(err) {
  show(view, el("p", { class: "error", role: "alert", text: String(err.message || err) }));
}

function card(a) {
  // a: {id|artwork_id, label|best_label, probability?, distance?}
  const id = a.id ?? a.artwork_id;
  return el("a", { class: "card", href: `#/artwork/${id}`, "data-artwork": id },
    el("img", { src: thumb(id), alt: `artwork ${id}`, loading: "lazy", width: 160, height: 160 }),
    el("span", { class: "label" }, a.best_label ?? a.label),
    el("span", { class: "meta" },
      a.distance !== undefined ? `d ${a.distance.toFixed(3)}` : pct(a.probability), ` · #${id}`));
}

function probabilities(probs, best) {
  const rows = Object.entries(probs || {}).sort((x, y) => y[1] - x[1]);
  return el("table", { class: "probs" }, rows.map(([c, p]) =>
    el("tr", { class: c === best ? "best" : null },
      el("th", {}, c), el("td", {}, el("span", { class: "bar", style: `width:${(100 * p).toFixed(1)}%` })),
      el("td", { class: "num" }, pct(p)))));
}

function labelButtons(id, predicted, onDone) {
  if (!me.can_edit) return el("p", { class: "hint" }, "Your Airflow role may view but not change labels.");
  return el("div", { class: "buttons" }, CLASSES.map((c) =>
    el("button", {
      type: "button", "data-label": c, class: c === predicted ? "primary" : null,
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { onDone(await api(`review/${id}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ label: c }) })); }
        catch (err) { alert(err.message); ev.target.disabled = false; }
      },
    }, c === predicted ? `confirm ${c}` : c)));
}

// The collections (the drop prefix each artwork came from, with its number of artworks) as a
// <select name="collection">. Artworks dropped straight under incoming/ have none: "all".
function collectionSelect(collections, selected, onchange = null) {
  return el("select", { name: "collection", id: "collection", onchange },
    el("option", { value: "" }, "all"),
    collections.map((c) => el("option", { value: c.collection, selected: c.collection === selected },
      `${c.collection} (${c.artworks.toLocaleString()})`)));
}

// ------------------------------------------------------------------ views
async function showArtworks(params) {
  const collections = await api("collections");
  const form = el("form", { class: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = "#/artworks?" + q;
  } },
  el("label", {}, "label ", el("select", { name: "label" }, el("option", { value: "" }, "any"),
    CLASSES.map((c) => el("option", { value: c, selected: params.get("label") === c }, c)))),
  el("label", {}, "confidence ≥ ", el("input", { name: "min_probability", type: "number", min: 0, max: 1, step: 0.05, value: params.get("min_probability") })),
  el("label", {}, "≤ ", el("input", { name: "max_probability", type: "number", min: 0, max: 1, step: 0.05, value: params.get("max_probability") })),
  el("label", {}, "dropped after ", el("input", { name: "dropped_after", type: "date", value: params.get("dropped_after") })),
  el("label", {}, "collection ", collectionSelect(collections, params.get("collection"))),
  el("button", { type: "submit" }, "Filter"));
  const grid = el("div", { class: "grid", id: "grid" });
  const more = el("button", { type: "button", hidden: true }, "More");
  show(view, el("h1", {}, "Artworks"), form, grid, more);
  let before = null;
  async function page() {
    const q = new URLSearchParams(params);
    if (before) q.set("before_id", before);
    const data = await api("artworks?" + q);
    grid.append(...data.items.map(card));
    if (!grid.children.length) grid.append(el("p", {}, "No artwork matches."));
    before = data.next_before_id;
    more.hidden = !before;
  }
  more.addEventListener("click", () => page().catch(fail));
  await page();
}

async function showArtwork(id) {
  const a = await api(`artworks/${id}`);
  const neighbours = el("div", { class: "grid", id: "neighbours" });
  const toggle = el("input", { type: "checkbox", id: "any-label" });
  const fill = () => show(neighbours,
    ...(toggle.checked ? a.neighbours_any_label : a.neighbours_same_label).map(card));
  toggle.addEventListener("change", fill);
  fill();
  const curation = el("div", { id: "curation" });
  const showCuration = (row) => show(curation,
    row.curated_label ? el("p", {}, `Curated: ${row.curated_label} by ${row.curated_by}`) : el("p", {}, "Not confirmed by a curator."),
    labelButtons(id, row.label, (r) => showCuration(r)));
  showCuration(a);
  show(view,
    el("h1", {}, `Artwork #${a.id}: ${a.best_label}`),
    el("div", { class: "detail" },
      el("img", { class: "picture", src: new URL(`api/artworks/${id}/image`, BASE).href, alt: `artwork ${id}` }),
      el("div", {},
        probabilities(a.probabilities, a.label),
        el("dl", {},
          el("dt", {}, "in the lake"), el("dd", {}, el("code", {}, a.location)),
          el("dt", {}, "dropped as"), el("dd", {}, el("code", {}, a.source_key)),
          el("dt", {}, "collection"), el("dd", {}, a.collection
            ? el("a", { href: "#/artworks?" + new URLSearchParams({ collection: a.collection }) }, a.collection) : "–"),
          el("dt", {}, "dropped"), el("dd", {}, when(a.created_at)),
          el("dt", {}, "size"), el("dd", {}, `${a.width}×${a.height} ${a.format}, ${a.byte_size} bytes`),
          el("dt", {}, "model"), el("dd", {}, `${a.model_version} (filed by ${a.filed_by} as ${a.filed_label})`)),
        curation,
        a.duplicates.length ? el("details", {}, el("summary", {}, `${a.duplicates.length} duplicate drop(s)`),
          el("ul", {}, a.duplicates.map((d) => el("li", {}, `${d.key} → ${d.final_key} (${d.duplicate_kind}${d.distance !== null ? `, distance ${d.distance}` : ""})`)))) : null)),
    el("h2", {}, "Most similar ", el("label", { class: "toggle" }, toggle, " any label")),
    neighbours);
}

async function showSearch() {
  const result = el("div", { id: "result" });
  const input = el("input", { type: "file", accept: "image/*", id: "file" });
  const zone = el("div", { class: "dropzone", id: "dropzone" },
    el("p", {}, "Drop a picture here, or "), el("label", { class: "button" }, "choose a file", input));
  async function ask(file) {
    const picture = el("img", { class: "picture", id: "query-picture", src: URL.createObjectURL(file), alt: file.name });
    show(result, el("p", {}, `Classifying ${file.name}…`));
    const body = new FormData();
    body.append("image", file);
    try {
      const r = await api("classify?k=5", { method: "POST", body });
      show(result,
        el("h2", { id: "answer" }, `${r.label} · ${pct(r.probability)}`),
        el("div", { class: "detail" }, picture, el("div", {}, probabilities(r.probabilities, r.label))),
        r.catalogued_as ? el("p", {}, "Already in the catalogue: ", el("a", { href: `#/artwork/${r.catalogued_as}` }, `#${r.catalogued_as}`)) : null,
        r.note ? el("p", { class: "hint" }, r.note) : null,
        el("h2", {}, `${r.neighbours.length} most similar (${r.label})`),
        el("div", { class: "grid", id: "neighbours" }, r.neighbours.map(card)));
    } catch (err) {
      show(result, el("p", { class: "error", role: "alert" }, err.message));
    }
  }
  input.addEventListener("change", () => input.files[0] && ask(input.files[0]));
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault(); zone.classList.remove("over");
    if (ev.dataTransfer.files[0]) ask(ev.dataTransfer.files[0]);
  });
  show(view, el("h1", {}, "Search by image"),
    el("p", { class: "hint" }, "Nothing is catalogued: the picture is classified and compared, then forgotten."),
    zone, result);
}

async function showReview(params) {
  const collection = params.get("collection") || null;
  const q = new URLSearchParams({ limit: 60, ...(collection ? { collection } : {}) });
  const [data, collections] = await Promise.all([api("review?" + q), api("collections")]);
  const pick = collectionSelect(collections, collection,
    (ev) => { location.hash = "#/review" + (ev.target.value ? "?" + new URLSearchParams({ collection: ev.target.value }) : ""); });
  let reviewed = data.reviewed;
  const all = data.reviewed + data.total;
  const bar = el("progress", { id: "review-progress", max: all || 1, value: reviewed });
  const count = el("span", { id: "review-count" });
  const progress = () => {
    bar.value = reviewed;
    count.textContent = `${reviewed.toLocaleString()} of ${all.toLocaleString()}${data.total_capped ? "+" : ""} reviewed`;
  };
  progress();
  const list = el("div", { class: "review" });
  for (const r of data.items) {
    const row = el("div", { class: "review-item", "data-artwork": r.artwork_id });
    row.append(card({ ...r }), el("div", {}, probabilities(r.probabilities, r.label),
      labelButtons(r.artwork_id, r.label, (res) => {
        reviewed += 1;
        progress();
        show(row, el("p", { class: "done" }, `#${r.artwork_id}: ${res.curated_label} (by ${res.curated_by})`));
      })));
    list.append(row);
  }
  show(view, el("h1", {}, collection ? `Review: ${collection}` : "Review"),
    el("form", { class: "filters" }, el("label", {}, "collection ", pick)),
    el("p", { class: "progress" }, bar, " ", count),
    el("p", {}, `${data.total.toLocaleString()}${data.total_capped ? "+" : ""} prediction(s) below ${pct(data.threshold)} confidence await a curator, least sure first`),
    data.items.length ? list : el("p", {}, "Nothing to review."));
}

function runLink(run) {
  if (!run) return "CLI";
  return el("a", { href: new URL(`dags/${encodeURIComponent(run.dag_id)}/runs/${encodeURIComponent(run.run_id)}`, AIRFLOW).href, target: "_top" }, run.run_id);
}

async function showLake() {
  const d = await api("lake");
  const table = (rows) => el("table", { class: "data" },
    el("tr", {}, ["id", "object", "reason", "message", "attempts", "run"].map((h) => el("th", {}, h))),
    rows.map((r) => el("tr", {}, el("td", {}, r.log_id), el("td", {}, el("code", {}, r.final_key || r.key)),
      el("td", {}, r.reason), el("td", {}, r.message), el("td", { class: "num" }, r.attempts), el("td", {}, runLink(r.run)))));
  show(view, el("h1", {}, "Lake"),
    el("table", { class: "data", id: "counts" }, el("tr", {}, el("th", {}, "state"), el("th", {}, "reason"), el("th", {}, "objects")),
      d.counts.map((c) => el("tr", {}, el("td", {}, c.state), el("td", {}, c.reason || ""), el("td", { class: "num" }, c.n)))),
    el("h2", {}, `Quarantined (latest ${d.quarantined.length})`), table(d.quarantined),
    el("h2", {}, `Failed (latest ${d.failed.length})`), table(d.failed));
}

async function showModels() {
  const [rows, runs] = await Promise.all([api("models"), api("retrain-runs")]);
  const plotUrl = (m, n) => new URL(`api/models/${encodeURIComponent(m.version)}/plots/${encodeURIComponent(n)}`, BASE).href;
  const plots = (m) => [...Object.keys(m.plots || {}), ...(m.derived_plots || [])].map((n) =>
    el("a", { href: plotUrl(m, n), target: "_blank" }, n));
  const act = rows.find((m) => m.is_active);
  const figures = [];
  if (act?.derived_plots?.includes("review.png")) {
    const r = act.review;
    figures.push(el("figure", { id: "plot-review" },
      el("img", { src: plotUrl(act, "review.png"), alt: "precision against coverage", width: 600, height: 400 }),
      el("figcaption", {}, `Review threshold ${r.threshold.toFixed(3)}: the lowest at which accepted labels reach ${pct(r.target_precision)} precision out of fold; it sends ${pct(1 - r.coverage)} of a new collection to review.`)));
  }
  if (act?.derived_plots?.includes("kshot.png")) {
    const k = act.kshot_mean;
    figures.push(el("figure", { id: "plot-kshot" },
      el("img", { src: plotUrl(act, "kshot.png"), alt: "k-shot curve", width: 600, height: 400 }),
      el("figcaption", {}, `Labelling k pictures per class of a new collection: balanced accuracy on the rest of it ${Object.entries(k).map(([n, v]) => `k=${n}: ${v.toFixed(2)}`).join(", ")}.`)));
  }
  show(view, el("h1", {}, "Models"),
    figures.length ? el("section", { class: "figures" }, el("h2", {}, `Active model ${act.version}`), figures) : "",
    el("table", { class: "data", id: "models" },
      el("tr", {}, ["version", "status", "arch", "CV balanced accuracy", "review threshold", "gate decision", "plots"].map((h) => el("th", {}, h))),
      rows.map((m) => el("tr", { class: m.is_active ? "best" : null },
        el("td", {}, el("code", {}, m.version), m.is_active ? " (active)" : ""),
        el("td", {}, m.status), el("td", {}, m.arch),
        el("td", { class: "num" }, m.cv_balanced_accuracy?.toFixed(3) ?? "–"),
        el("td", { class: "num" }, m.review_threshold?.toFixed(3) ?? "–"),
        el("td", {}, m.decision ? `${m.decision.promote ? "promoted" : "refused"}: ${m.decision.reasons.join("; ")}` : "–"),
        el("td", {}, plots(m))))),
    el("h2", {}, "Retraining runs"),
    runs.length ? el("table", { class: "data", id: "retrain-runs" },
      el("tr", {}, ["started", "run", "outcome", "labelled images", "report"].map((h) => el("th", {}, h))),
      runs.map((r) => el("tr", {},
        el("td", {}, new Date(r.started_at).toLocaleString()),
        el("td", {}, runLink(r.run)),
        el("td", {}, r.status === "skipped" ? `nothing trained: ${r.reason}` : `${r.status}: `, r.version ? el("code", {}, r.version) : ""),
        el("td", { class: "num" }, `${r.dataset.n} (${r.dataset.new_since_active.n} new)`),
        el("td", {}, el("details", {}, el("summary", {}, "report"), el("pre", { class: "report" }, r.report_md))))))
      : el("p", { class: "hint" }, "No retraining has run yet (the artclf_retrain DAG runs nightly)."));
}

// ------------------------------------------------------------------ router
async function route() {
  const [path, query] = (location.hash.slice(1) || "/artworks").split("?");
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === parts[0]);
  show(view, el("p", { class: "hint" }, "Loading…"));
  try {
    if (parts[0] === "artwork" && parts[1]) await showArtwork(Number(parts[1]));
    else if (parts[0] === "search") await showSearch();
    else if (parts[0] === "review") await showReview(new URLSearchParams(query || ""));
    else if (parts[0] === "lake") await showLake();
    else if (parts[0] === "models") await showModels();
    else await showArtworks(new URLSearchParams(query || ""));
  } catch (err) { fail(err); }
}

window.addEventListener("hashchange", route);
api("whoami").then((w) => { me = w; document.getElementById("whoami").textContent = `${w.user}${w.can_edit ? " (may edit labels)" : " (read only)"}`; })
  .catch(() => {}).finally(route);
