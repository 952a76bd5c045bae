"use strict";
// The search page: query -> POST /search -> result grid; click -> POST /explain -> heat map.
const $ = (s) => document.querySelector(s);
let info = null;
let lastQuery = "";

function fmt(x, digits = 3) { return x === null || x === undefined ? "—" : Number(x).toFixed(digits); }

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}` +
      (d.input !== undefined && typeof d.input !== "object" ? ` (got ${JSON.stringify(d.input)})` : "")).join("; ");
  }
  return JSON.stringify(detail);
}

function setStatus(text, error = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", error);
}

async function loadInfo() {
  const r = await fetch("/info");
  info = await r.json();
  const idx = info.index || {};
  const recall = idx.kind === "flat" ? "exact search" : `${idx.kind}, recall@10 ${fmt(idx.recall_at_10, 3)}`;
  $("#about").textContent = `${info.images} images · ${info.method} model · ${recall}`;
  // options come from the method's declared capabilities, never from its name
  if (info.rerank) {
    $("#rerank-label").hidden = false;
    $("#rerank").value = info.default_rerank || 0;
    $("#rerank").max = info.limits.max_rerank;
  }
  document.body.dataset.ready = "1";
}

function confidenceOf(hit) {
  if (hit.match_probability !== null && hit.match_probability !== undefined) {
    return `p(match) ${(100 * hit.match_probability).toFixed(1)}%`;
  }
  return "confidence —";
}

function render(data) {
  const grid = $("#results");
  grid.replaceChildren();
  for (const hit of data.hits) {
    const fig = document.createElement("figure");
    fig.className = "result";
    fig.dataset.id = hit.id;
    fig.dataset.rank = hit.rank;
    fig.title = hit.name;
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = hit.name;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    // outside the re-ranked top K the model's score is cosine - 100 (it ranks them last): show the cosine
    const tail = data.rerank && !hit.reranked;
    cap.innerHTML = `<div>#${hit.rank} <span class="score">${tail ? "cos " + fmt(hit.cosine) : fmt(hit.score)}</span></div>` +
      `<div class="confidence">${tail ? "not re-ranked" : confidenceOf(hit)}</div>`;
    fig.append(img, cap);
    fig.addEventListener("click", () => showDetail(hit, fig));
    grid.append(fig);
  }
  let note = `${data.hits.length} results in ${fmt(data.timings_ms.total, 1)} ms`;
  if (data.rerank) note += ` · top ${data.rerank} re-ranked`;
  if (data.query_uncertainty !== null && data.query_uncertainty !== undefined) {
    note += ` · query uncertainty ${fmt(data.query_uncertainty, 4)}`;
  }
  setStatus(note);
}

async function search(event) {
  if (event) event.preventDefault();
  const text = $("#query").value.trim();
  if (!text) { setStatus("Type a description first.", true); return; }
  lastQuery = text;
  setStatus("Searching…");
  $("#detail").hidden = true;
  const body = { text, k: Number($("#k").value), rerank: info && info.rerank ? Number($("#rerank").value) : 0 };
  try {
    const r = await fetch("/search", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    const data = await r.json();
    if (!r.ok) { setStatus(`Error ${r.status}: ${detailText(data.detail)}`, true); return; }
    render(data);
  } catch (err) {
    setStatus(`Request failed: ${err}`, true);
  }
}

function heatColour(x) {
  const c = (v) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(v))));
  return [c(4 * x - 3), c(4 * x - 2), c(4 * x - 1)];
}

function drawHeat(map) {
  const canvas = $("#heat");
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const rows = map.weights.length, cols = map.weights[0].length;
  const flat = map.weights.flat();
  const lo = Math.min(...flat), hi = Math.max(...flat), span = Math.max(hi - lo, 1e-12);
  const small = document.createElement("canvas");
  small.width = cols; small.height = rows;
  const sctx = small.getContext("2d");
  const px = sctx.createImageData(cols, rows);
  flat.forEach((v, i) => {
    const [r, g, b] = heatColour((v - lo) / span);
    px.data.set([r, g, b, 255], 4 * i);
  });
  sctx.putImageData(px, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.globalAlpha = 0.5;
  ctx.drawImage(small, 0, 0, w, h);
  canvas.dataset.label = map.label;
  canvas.dataset.drawn = "1";
}

async function showDetail(hit, fig) {
  document.querySelectorAll(".result.selected").forEach((el) => el.classList.remove("selected"));
  fig.classList.add("selected");
  const panel = $("#detail");
  panel.hidden = false;
  panel.dataset.id = hit.id;
  $("#detail-img").src = hit.image_url;
  const canvas = $("#heat");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  delete canvas.dataset.drawn;
  $("#words").replaceChildren();
  const parts = [`#${hit.rank} · ${hit.name}`, `score ${fmt(hit.score)}`, `cosine ${fmt(hit.cosine)}`];
  if (hit.match_probability !== null && hit.match_probability !== undefined) parts.push(confidenceOf(hit));
  if (hit.image_uncertainty !== null && hit.image_uncertainty !== undefined) parts.push(`image uncertainty ${fmt(hit.image_uncertainty, 4)}`);
  $("#detail-info").textContent = parts.join(" · ");
  const note = $("#explain-note");
  if (!info.explain) { note.textContent = `Heat maps need a method that declares association maps; this index's ${info.method} model does not.`; return; }
  note.textContent = "Computing association maps…";
  const r = await fetch("/explain", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text: lastQuery, id: hit.id }) });
  const data = await r.json();
  if (!r.ok) { note.textContent = `Error ${r.status}: ${detailText(data.detail)}`; return; }
  if (String(panel.dataset.id) !== String(hit.id)) return;  // another result was clicked meanwhile
  note.textContent = `Where each word looks (cross-attention, ${data.grid[0]}×${data.grid[1]} patches). Click a word.`;
  const order = ["caption", "phrase", "word"];
  const maps = [...data.maps].sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind));
  const buttons = maps.map((m) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `word ${m.kind}`;
    b.textContent = m.kind === "caption" ? "whole caption" : m.label;
    b.addEventListener("click", () => {
      buttons.forEach((x) => x.classList.remove("active"));
      b.classList.add("active");
      drawHeat(m);
    });
    return b;
  });
  $("#words").replaceChildren(...buttons);
  const draw = () => buttons.length && buttons[0].click();
  const img = $("#detail-img");
  if (img.complete) draw(); else img.addEventListener("load", draw, { once: true });
}

$("#search-form").addEventListener("submit", search);
loadInfo().catch((err) => setStatus(`Cannot reach the server: ${err}`, true));
