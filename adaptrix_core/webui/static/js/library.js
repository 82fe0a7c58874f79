// Library panel: every adapter with what it does and where it stands in the cache; load, pin, unload.

import { api } from "./api.js";
import { describeError } from "./answer.js";
import { $, el, formatBytes, formatNumber, toast } from "./dom.js";
import { refreshAdapters, state, subscribe } from "./store.js";

const busy = new Set(); // adapter names with an action in flight

function matches(adapter, filter) {
  if (!filter) return true;
  const hay = [adapter.name, adapter.domain, adapter.description, ...(adapter.capabilities || [])].join(" ").toLowerCase();
  return filter.toLowerCase().split(/\s+/).every((word) => hay.includes(word));
}

function targetsText(a) {
  if (!a.targets || !a.targets.length) return "–";
  const layers = a.layers ? ` · layers ${a.layers[0]}–${a.layers[1]}` : "";
  return a.targets.join(", ") + layers;
}

function rankText(a) {
  if (a.rank === null || a.rank === undefined) return "–";
  return a.alpha !== null && a.alpha !== undefined ? `${a.rank} (alpha ${formatNumber(a.alpha, a.alpha % 1 ? 1 : 0)})` : String(a.rank);
}

function fact(label, value) {
  return [el("dt", {}, label), el("dd", {}, value)];
}

function badges(a) {
  if (!a.resident) return [el("span", { class: "badge idle" }, "Not loaded")];
  const out = [el("span", { class: "badge resident" }, "Resident")];
  if (a.cache && a.cache.pinned) out.push(el("span", { class: "badge pinned" }, "Pinned"));
  if (a.cache && a.cache.in_use) out.push(el("span", { class: "badge busy" }, `In use ×${a.cache.in_use}`));
  return out;
}

async function act(name, verb) {
  busy.add(name);
  render();
  try {
    if (verb === "unload") await api(`/v1/adapters/${encodeURIComponent(name)}`, { method: "DELETE", admin: true });
    else await api(`/v1/adapters/${encodeURIComponent(name)}/load`, { method: "POST", body: { pin: verb === "pin" }, admin: true });
    toast(`${name}: ${verb === "pin" ? "loaded and pinned" : verb === "load" ? "loaded" : "unloaded"}`);
  } catch (error) {
    toast(`${name}: ${describeError(error)}`, "error");
  } finally {
    busy.delete(name);
    await refreshAdapters().catch(() => render());
  }
}

const ADMIN_OFF = "Loading and unloading are off on this server: it has an API key but no admin key (--admin-key).";

function card(a) {
  const pinned = Boolean(a.cache && a.cache.pinned);
  const working = busy.has(a.name) || state.admin === "off";
  const button = (label, verb, disabled, extra = "") =>
    el("button", {
      type: "button", class: `btn small ${extra}`, disabled: disabled || working,
      "aria-label": `${label} ${a.name}`, onclick: () => act(a.name, verb),
    }, label);
  const stateFacts = a.resident
    ? [...fact("In memory", formatBytes(a.cache && a.cache.bytes)), ...fact("Hits", formatNumber(a.cache && a.cache.hits))]
    : fact("Hits", "0 (not resident)");
  return el("article", { class: "card adapter", dataset: { adapter: a.name }, "aria-label": a.name },
    el("header", {}, el("h2", {}, a.name), ...badges(a)),
    el("p", { class: "desc" }, a.description || "No description."),
    el("div", { class: "chips" },
      a.domain ? el("span", { class: "chip domain", title: "domain" }, a.domain) : null,
      ...(a.capabilities || []).filter((c) => c !== a.domain).map((c) => el("span", { class: "chip", title: "capability" }, c))),
    el("dl", { class: "facts" },
      ...fact("Rank", rankText(a)),
      ...fact("Targets", targetsText(a)),
      ...fact("Size", a.file_bytes ? `${formatBytes(a.file_bytes)} on disk` : "–"),
      ...fact("Source", a.source || (a.shipped ? "shipped with Adaptrix" : "–")),
      ...stateFacts),
    el("div", { class: "actions" },
      button("Load", "load", a.resident),
      button("Pin", "pin", pinned),
      button("Unload", "unload", !a.resident, "danger"),
      el("a", { class: "btn small ghost try", href: `#playground?model=${encodeURIComponent(a.name)}` }, "Try it →")));
}

function render() {
  const filter = $("#library-filter").value.trim();
  const list = $("#library-list");
  const shown = state.adapters.filter((a) => matches(a, filter));
  const resident = state.adapters.filter((a) => a.resident);
  const bytes = resident.reduce((sum, a) => sum + ((a.cache && a.cache.bytes) || 0), 0);
  $("#library-summary").textContent = state.adapters.length
    ? `${state.adapters.length} adapters · ${resident.length} resident · ${formatBytes(bytes)} in memory`
      + (state.admin === "off" ? `. ${ADMIN_OFF}` : "")
    : "";
  if (!state.adapters.length) {
    list.replaceChildren(el("p", { class: "empty" }, "No adapters yet. Add one with adaptrix convert or adaptrix train."));
    return;
  }
  list.replaceChildren(...(shown.length ? shown.map(card) : [el("p", { class: "empty" }, `Nothing matches “${filter}”.`)]));
}

export function initLibrary() {
  $("#library-filter").addEventListener("input", render);
  $("#library-refresh").addEventListener("click", () => refreshAdapters().catch((e) => toast(describeError(e), "error")));
  subscribe(render);
  return { onShow: () => refreshAdapters().catch((e) => toast(describeError(e), "error")) };
}
