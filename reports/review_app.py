"""The served review page (``GET /review`` of ``cellclf serve RUN_DIR --review FOLDER``): a page
with a script, unlike the static reports, because it saves what the reviewer does.

The reviewer works from the keyboard: arrows (or j / k) move between cells, 1-9 give the
focused cell the n-th class, Enter confirms the model's call, x leaves the cell out of
training ("(excluded)"); each change is saved at once (``POST /review/corrections``) and the
counts and the differential follow. The cells come in review order (unlike the training images,
then uncertain, then by confidence); a class filter shows one class's calls. Every few seconds
the page asks for the saved state, so another reviewer's saves appear; a save that would
replace another reviewer's newer one is refused by the server and shown on the cell.

Only same-origin requests are made; the Content-Security-Policy allows this page's inline
script and style, images from the server, and nothing from elsewhere.
"""

from __future__ import annotations

from typing import Any, Mapping

from cellreports.html import STYLE, escape

CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                           "script-src 'unsafe-inline'; connect-src 'self'")

REVIEW_STYLE = """
#bar { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #d5dbe3; padding: 8px 32px; z-index: 2; }
#bar label { margin-right: 14px; }
#status { margin-left: 12px; font-weight: 600; }
#status.error { color: #a01010; }
#keys { font-size: 0.85em; color: #444; }
#counts td, #counts th { padding: 2px 6px; }
.cell { border: 1px solid #d5dbe3; padding: 6px; width: 176px; font-size: 0.8em; cursor: pointer; }
.cell.focus { outline: 3px solid #23395d; }
.cell.uncertain { border: 2px solid #e0b000; background: #fffbeb; }
.cell.unlike { border: 2px solid #c00000; background: #fde8e8; }
.cell.done { background: #eaf6ea; }
.cell img { display: block; width: 160px; height: 160px; object-fit: contain; margin: 0 auto 4px auto; }
.cell .path { word-break: break-all; color: #777; }
.cell .call { font-weight: 600; }
.cell .changed { color: #a01010; }
.cell .conflict { color: #a01010; font-weight: 600; }
.hidden { display: none; }
"""

SCRIPT = r"""
const state = {cells: [], classes: [], focus: 0, filter: "", excluded: "(excluded)"};
const $ = (id) => document.getElementById(id);
const text = (tag, value, cls) => { const e = document.createElement(tag); e.textContent = value; if (cls) e.className = cls; return e; };

function reviewer() { return $("reviewer").value.trim(); }
function call(cell) { return cell.label || cell.predicted; }
function visible() { return state.cells.filter(c => !state.filter || call(c) === state.filter); }

function draw(cell) {
  const card = $("cell-" + cell.index);
  card.className = "cell" + (cell.unlike_training ? " unlike" : cell.uncertain ? " uncertain" : "")
    + (cell.label ? " done" : "") + (state.filter && call(cell) !== state.filter ? " hidden" : "");
  if (visible()[state.focus] === cell) card.classList.add("focus");
  const info = card.querySelector(".info");
  info.replaceChildren();
  info.appendChild(text("div", "model: " + cell.predicted + " " + cell.confidence.toFixed(2)));
  if (cell.given) info.appendChild(text("div", "folder: " + cell.given));
  if (cell.unlike_training) info.appendChild(text("div", "unlike the training images", "changed"));
  else if (cell.uncertain) info.appendChild(text("div", "uncertain", "changed"));
  const line = cell.label ? (cell.label === cell.predicted ? "confirmed " : "now ") + cell.label : "not reviewed";
  info.appendChild(text("div", line, "call" + (cell.label && cell.label !== cell.predicted ? " changed" : "")));
  if (cell.label) info.appendChild(text("div", "by " + cell.reviewer + " (rev " + cell.revision + ")"));
  if (cell.conflict) info.appendChild(text("div", cell.conflict, "conflict"));
  card.querySelector("select").value = cell.label || "";
}

function build() {
  const grid = $("cells");
  grid.replaceChildren();
  for (const cell of state.cells) {
    const card = document.createElement("div");
    card.id = "cell-" + cell.index;
    card.dataset.sha256 = cell.sha256;
    const img = document.createElement("img");
    img.loading = "lazy"; img.src = "/review/image/" + cell.index; img.alt = cell.path;
    card.appendChild(img);
    const info = document.createElement("div"); info.className = "info"; card.appendChild(info);
    const select = document.createElement("select");
    select.setAttribute("aria-label", "class of " + cell.path);
    select.appendChild(new Option("(set class)", ""));
    state.classes.forEach((name, i) => select.appendChild(new Option((i + 1) + " " + name, name)));
    select.appendChild(new Option("x " + state.excluded, state.excluded));
    select.addEventListener("change", () => { if (select.value) save(cell, select.value); });
    card.appendChild(select);
    card.appendChild(text("div", cell.path, "path"));
    card.addEventListener("click", () => { state.focus = visible().indexOf(cell); redraw(); });
    grid.appendChild(card);
  }
  redraw();
}

function redraw() { state.cells.forEach(draw); }

function counts(data) {
  const table = $("counts");
  table.replaceChildren();
  const head = document.createElement("tr");
  ["class", "cells"].forEach(h => head.appendChild(text("th", h)));
  table.appendChild(head);
  for (const name of state.classes) {
    const row = document.createElement("tr");
    row.appendChild(text("td", name)); row.appendChild(text("td", String(data.counts[name]), "num"));
    table.appendChild(row);
  }
  $("reviewed").textContent = data.reviewed + " of " + state.cells.length + " cells reviewed, " + data.excluded + " left out";
  const d = data.differential;
  let line = "";
  if (d && d.white_cells) {
    line = "Differential of " + d.white_cells + " white cells (95% CI): " + d.rows.map(r =>
      r.class + " " + r.percent.toFixed(1) + "% (" + r.ci[0].toFixed(1) + "-" + r.ci[1].toFixed(1) + ")").join(", ");
    if (d.nucleated_red && d.nucleated_red.per_100_white !== null)
      line += "; nucleated red cells " + d.nucleated_red.per_100_white.toFixed(1) + " per 100 white cells";
    if (d.platelets) line += "; platelets " + d.platelets.cells + " (counted apart)";
  }
  $("differential").textContent = line;
}

function status(message, error) { const s = $("status"); s.textContent = message; s.className = error ? "error" : ""; }

async function save(cell, label) {
  if (!reviewer()) { status("Type your name in 'Reviewer' first: each correction keeps who made it.", true); $("reviewer").focus(); return; }
  localStorage.setItem("cellclf-reviewer", reviewer());
  const response = await fetch("/review/corrections", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sha256: cell.sha256, label: label, reviewer: reviewer(), revision: cell.revision})});
  const data = await response.json();
  if (response.status === 409) {
    const current = data.current || {};
    Object.assign(cell, {label: current.label, reviewer: current.reviewer, revision: Number(current.revision || 0),
                         conflict: "Not saved: " + data.detail});
    draw(cell); status("Not saved: " + data.detail, true); return;
  }
  if (!response.ok) { status("Not saved: " + data.detail, true); return; }
  Object.assign(cell, {label: data.saved.label, reviewer: data.saved.reviewer, revision: data.saved.revision, conflict: null});
  counts(data);
  status("Saved " + cell.path + " as " + label + " (" + data.saved.time + ")", false);
  move(1);
}

function move(step) {
  const shown = visible();
  if (!shown.length) return;
  state.focus = Math.max(0, Math.min(shown.length - 1, state.focus + step));
  redraw();
  $("cell-" + shown[state.focus].index).scrollIntoView({block: "nearest"});
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const cell = visible()[state.focus];
  if (event.key === "ArrowRight" || event.key === "j") { move(1); event.preventDefault(); }
  else if (event.key === "ArrowLeft" || event.key === "k") { move(-1); event.preventDefault(); }
  else if (!cell) return;
  else if (event.key === "Enter") { save(cell, cell.predicted); event.preventDefault(); }
  else if (event.key === "x") { save(cell, state.excluded); }
  else if (/^[1-9]$/.test(event.key) && Number(event.key) <= state.classes.length) { save(cell, state.classes[Number(event.key) - 1]); }
});

async function load(first) {
  const response = await fetch("/review/state");
  const data = await response.json();
  if (first) {
    state.classes = data.classes; state.excluded = data.excluded_label; state.cells = data.cells;
    const filter = $("filter");
    data.classes.forEach(name => filter.appendChild(new Option(name, name)));
    build();
  } else {
    const byId = new Map(data.cells.map(c => [c.sha256, c]));
    for (const cell of state.cells) {
      const now = byId.get(cell.sha256);
      if (now && now.revision > cell.revision) { Object.assign(cell, now, {conflict: null}); draw(cell); }
    }
  }
  counts(data);
}

$("reviewer").value = localStorage.getItem("cellclf-reviewer") || "";
$("filter").addEventListener("change", (event) => { state.filter = event.target.value; state.focus = 0; redraw(); });
load(true).then(() => setInterval(() => load(false), 5000));
"""


def review_app_page(state: Mapping[str, Any], model_name: str) -> str:
    """The review page of a served review (its data is fetched from ``/review/state``)."""
    n = len(state["cells"])
    keys = ("Keys: \u2190 \u2192 (or k j) move; " + "; ".join(f"{i + 1} {name}" for i, name in enumerate(state["classes"][:9]))
            + f"; Enter confirms the model's call; x leaves the cell out of training {state['excluded_label']}. "
            "Each change is saved at once.")
    how = (f"Corrections are saved to {state['corrections']} at every change (download: /review/corrections.csv). "
           f"Refit on them: cellclf fit EMBEDDINGS -o NEW_RUN --labels {state['corrections']} (the corrected cells "
           f"are added from {state.get('embeddings') or 'their embeddings file'}); or adapt the model to this lab: "
           f"cellclf adapt RUN_DIR {state.get('embeddings') or 'EMBEDDINGS'} -o ADAPTED --labels {state['corrections']}.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{escape(CONTENT_SECURITY_POLICY)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cellclf review — {escape(state['folder'])}</title>
<style>{STYLE}{REVIEW_STYLE}</style></head>
<body>
<header><h1>Review — {escape(state['folder'])}</h1>
<p>{n} cells classified by {escape(model_name)}; cells unlike the training images first (red), then uncertain ones
(yellow), then the rest, least confident first.</p></header>
<div id="bar">
<label>Reviewer <input id="reviewer" size="14" placeholder="your name"></label>
<label>Show <select id="filter"><option value="">every class</option></select></label>
<span id="reviewed"></span><span id="status" role="status"></span>
<div id="keys">{escape(keys)}</div>
</div>
<main>
<noscript><p class="warning">This page needs JavaScript to save corrections. The static review page of
cellclf predict --review works without it.</p></noscript>
<section><h2>Counts</h2><p id="differential"></p><table id="counts"></table>
<p class="note">{escape(how)}</p></section>
<section><h2>Cells</h2><div id="cells" class="cards"></div></section>
</main>
<script>{SCRIPT}</script>
</body></html>
"""
