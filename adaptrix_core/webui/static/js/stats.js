// Stats panel: GET /v1/stats every two seconds while the panel is shown; tokens/s from successive samples.

import { api } from "./api.js";
import { describeError } from "./answer.js";
import { $, el, formatBytes, formatDuration, formatMs, formatNumber } from "./dom.js";

const PERIOD_MS = 2000;
const HISTORY = 60; // samples kept for the tokens/s sparkline (two minutes)

let timer = null;
let visible = false;
let paused = false;
let previous = null; // {tokens, at} of the last sample
const rates = [];
const tiles = new Map();

const TILES = [
  ["hit-rate", "Cache hit rate"],
  ["evictions", "Evictions"],
  ["resident", "Resident adapters"],
  ["resident-bytes", "Resident bytes"],
  ["memory", "Process memory"],
  ["batch", "Mean batch size"],
  ["tokens", "Tokens/s"],
  ["requests", "Requests"],
];

function buildTiles() {
  const grid = $("#stats-grid");
  for (const [key, label] of TILES) {
    const value = el("span", { class: "value" }, "–");
    const detail = el("span", { class: "detail" }, "");
    const tile = el("div", { class: "card stat", dataset: { stat: key } }, el("span", { class: "label" }, label), value, detail);
    tiles.set(key, { tile, value, detail });
    grid.append(tile);
  }
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${HISTORY - 1} 32`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  svg.append(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
  tiles.get("tokens").tile.append(svg);
}

function set(key, value, detail = "") {
  const tile = tiles.get(key);
  tile.value.textContent = value;
  tile.detail.textContent = detail;
}

function sparkline() {
  const line = tiles.get("tokens").tile.querySelector("polyline");
  const top = Math.max(...rates, 1);
  const offset = HISTORY - rates.length;
  line.setAttribute("points", rates.map((r, i) => `${offset + i},${(31 - (r / top) * 30).toFixed(1)}`).join(" "));
}

function plural(n, word, many = `${word}s`) {
  return `${formatNumber(n)} ${n === 1 ? word : many}`;
}

function render(stats) {
  const cache = stats.cache || {};
  const server = stats.server || {};
  const scheduler = server.scheduler || {};
  const memory = cache.memory || {};
  const lookups = (cache.hits || 0) + (cache.misses || 0);
  set("hit-rate", cache.hit_rate === null || cache.hit_rate === undefined ? "–" : `${formatNumber(cache.hit_rate * 100, 1)}%`,
    `${plural(cache.hits, "hit")} · ${plural(cache.misses, "miss", "misses")}${lookups ? "" : " (no lookups yet)"}`);
  const load = cache.load_ms || {};
  const failed = cache.load_failures ? ` · ${formatNumber(cache.load_failures)} failed` : "";
  set("evictions", formatNumber(cache.evictions),
    `${plural(cache.loads, "load")}${load.count ? ` · p50 ${formatMs(load.p50)}` : ""}${failed}`);
  set("resident", formatNumber(cache.resident_count), cache.max_adapters ? `at most ${cache.max_adapters}` : "no count limit");
  set("resident-bytes", formatBytes(cache.resident_bytes), cache.max_bytes ? `budget ${formatBytes(cache.max_bytes)}` : "no byte budget");
  set("memory", formatBytes(memory.rss_bytes), memory.gpu_allocated_bytes
    ? `GPU ${formatBytes(memory.gpu_allocated_bytes)} allocated` : `${stats.device || "cpu"} · ${stats.dtype || ""}`);
  set("batch", scheduler.mean_batch ? formatNumber(scheduler.mean_batch, 2) : "–",
    `largest ${formatNumber(scheduler.largest_batch)} · max ${formatNumber(scheduler.max_batch)} · ${formatNumber(scheduler.batches)} batches`);
  const now = performance.now();
  const tokens = typeof server.generated_tokens === "number" ? server.generated_tokens : scheduler.tokens;
  if (previous && typeof tokens === "number" && tokens >= previous.tokens) {
    rates.push((tokens - previous.tokens) / ((now - previous.at) / 1000));
    if (rates.length > HISTORY) rates.shift();
  }
  previous = typeof tokens === "number" ? { tokens, at: now } : null;
  const busy = scheduler.busy_s ? ` · ${formatNumber(tokens / scheduler.busy_s, 1)} while busy` : "";
  set("tokens", rates.length ? formatNumber(rates[rates.length - 1], 1) : "–", `${formatNumber(tokens)} tokens in all${busy}`);
  sparkline();
  set("requests", formatNumber(server.requests), `${plural(server.errors, "error")} · up ${formatDuration(server.uptime_s)}`);
  renderAdapters(cache.adapters || {});
}

function renderAdapters(adapters) {
  const names = Object.keys(adapters);
  const box = $("#stats-adapters");
  if (!names.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No adapter is in memory. Load one from the Library or send a request."));
    return;
  }
  const head = ["Adapter", "In memory", "Pinned", "In use", "Hits", "Idle"];
  const optional = new Set(["In use", "Idle"]); // hidden at phone width
  box.replaceChildren(el("table", { "aria-label": "Resident adapters" },
    el("thead", {}, el("tr", {}, ...head.map((h, i) =>
      el("th", { scope: "col", class: `${i ? "num" : ""} ${optional.has(h) ? "optional" : ""}` }, h)))),
    el("tbody", {}, ...names.map((name) => {
      const a = adapters[name];
      return el("tr", {},
        el("td", { class: "name" }, name),
        el("td", { class: "num" }, formatBytes(a.bytes)),
        el("td", { class: "num" }, a.pinned ? "yes" : "no"),
        el("td", { class: "num optional" }, formatNumber(a.in_use)),
        el("td", { class: "num" }, formatNumber(a.hits)),
        el("td", { class: "num optional" }, formatDuration(a.idle_s)));
    }))));
}

let inFlight = false;

async function tick() {
  timer = null;
  if (inFlight || !visible || paused || document.hidden) return;
  inFlight = true;
  try {
    render(await api("/v1/stats"));
    $("#stats-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("#stats-updated").textContent = describeError(error);
  } finally {
    inFlight = false;
  }
  schedule();
}

function schedule() {
  if (timer === null && visible && !paused && !document.hidden) timer = setTimeout(tick, PERIOD_MS);
}

export function initStats() {
  buildTiles();
  $("#stats-pause").addEventListener("click", (event) => {
    paused = !paused;
    event.currentTarget.textContent = paused ? "Resume" : "Pause";
    event.currentTarget.setAttribute("aria-pressed", String(paused));
    if (!paused) tick();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden && visible) tick(); });
  return {
    onShow: () => {
      visible = true;
      if (timer !== null) clearTimeout(timer);
      tick();
    },
    onHide: () => {
      visible = false;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      previous = null;
    },
  };
}
