// The search page: pick or drop an image -> POST /search (multipart); click a result ->
// POST /search {id}; the label box filters by label. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const statusLine = $("status");

function filters() {
  const text = $("label-filter").value.trim();
  if (!text) return null;
  const labels = text.split(/[\s,]+/).filter(Boolean).map(Number);
  if (labels.some((n) => !Number.isInteger(n))) throw new Error("labels are integers, e.g. 3 or 3,7");
  return { label: labels };
}

function k() {
  const value = parseInt($("k").value, 10);
  return Number.isInteger(value) && value > 0 ? Math.min(value, 1000) : 12;
}

async function post(body, headers) {
  const started = performance.now();
  statusLine.textContent = "searching…";
  const response = await fetch("/search", { method: "POST", body, headers });
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || response.statusText);
  const ms = Math.round(performance.now() - started);
  statusLine.textContent = `${answer.results.length} results in ${ms} ms`;
  return answer.results;
}

// three decimals, unless that would read 0.000 (near-duplicates, untrained models);
// below 1e-6 it is float rounding (an item's distance to itself, -2e-7): 0
function formatDistance(d) {
  if (Math.abs(d) < 1e-6) return "0.000";
  return Math.abs(d) < 0.001 ? d.toExponential(1) : d.toFixed(3);
}

// small images (a 28-px digit) scaled up: keep their pixels sharp instead of blurred
function sharpenWhenSmall(img) {
  img.addEventListener("load", () => {
    if (img.naturalWidth * 2 <= img.clientWidth) img.style.imageRendering = "pixelated";
  });
}

function show(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of results) {
    const tile = $("tile").content.firstElementChild.cloneNode(true);
    tile.dataset.id = hit.id;
    sharpenWhenSmall(tile.querySelector("img"));
    tile.querySelector("img").src = hit.thumbnail;
    tile.querySelector("img").alt = `item ${hit.id}`;
    const name = hit.label_name ?? `label ${hit.label}`;
    tile.querySelector(".name").textContent = name.split("/").pop(); // "fashion_mnist/sandal"
    tile.title = `${name} · item ${hit.id} · click to search with it`;
    tile.querySelector(".distance").textContent = formatDistance(hit.distance);
    tile.addEventListener("click", () => searchById(hit.id, hit.thumbnail));
    grid.append(tile);
  }
}

function setQuery(src) {
  $("query-image").src = src;
  $("query-image").hidden = false;
  $("drop-text").textContent = "Drop or pick another image";
}

async function run(task) {
  try {
    show(await task());
  } catch (error) {
    statusLine.textContent = `error: ${error.message}`;
  }
}

let again = null; // the last search, re-run when k or the label filter changes

function searchByFile(file) {
  if (!file) return;
  setQuery(URL.createObjectURL(file));
  again = () => searchByFile(file);
  run(() => {
    const form = new FormData();
    form.append("image", file);
    form.append("k", String(k()));
    const wanted = filters();
    if (wanted) form.append("filters", JSON.stringify(wanted));
    return post(form);
  });
}

function searchById(id, thumbnail) {
  setQuery(thumbnail);
  again = () => searchById(id, thumbnail);
  run(() => post(JSON.stringify({ id, k: k(), filters: filters() }),
    { "Content-Type": "application/json" }));
}

$("file").addEventListener("change", (event) => {
  searchByFile(event.target.files[0]);
  event.target.value = ""; // picking the same file again searches again
});
for (const id of ["k", "label-filter"]) {
  $(id).addEventListener("change", () => again && again());
}
sharpenWhenSmall($("query-image"));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchByFile(event.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") $("file").click();
});

fetch("/stats").then((r) => r.json()).then((s) => {
  $("stats").textContent = `${s.items.toLocaleString()} items · ${s.spec} · ${s.metric}`;
}).catch(() => {});
