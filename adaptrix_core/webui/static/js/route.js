// Route panel: POST /v1/route shows every candidate with its score and reason, and what `auto` would use.

import { api } from "./api.js";
import { describeError } from "./answer.js";
import { $, el, formatNumber, formatWeight } from "./dom.js";
import { state, subscribe } from "./store.js";

function candidatesTable(result) {
  const top = Math.max(...result.candidates.map((c) => c.score), 0) || 1;
  const rows = result.candidates.map((c, i) => {
    const weight = result.adapters[c.adapter];
    const bar = el("div", { class: "bar", "aria-hidden": "true" }, el("span"));
    bar.firstChild.style.width = `${Math.max(0, Math.min(1, c.score / top)) * 100}%`;
    return el("tr", { class: weight ? "chosen" : "" },
      el("td", { class: "num rank" }, String(i + 1)),
      el("td", { class: "name" }, c.adapter),
      el("td", { class: "num score" }, formatNumber(c.score, 3), bar),
      el("td", { class: "num weight" }, weight ? formatWeight(weight) : ""),
      el("td", { class: "why" }, c.reason));
  });
  return el("div", { class: "table-wrap" }, el("table", { class: "candidates", "aria-label": "Route candidates" },
    el("thead", {}, el("tr", {},
      el("th", { class: "num", scope: "col" }, "#"), el("th", { scope: "col" }, "Adapter"),
      el("th", { class: "num", scope: "col" }, "Score"), el("th", { class: "num", scope: "col" }, "Weight"),
      el("th", { scope: "col" }, "Why"))),
    el("tbody", {}, ...rows)));
}

function renderResult(result) {
  const chosen = result.model === "base"
    ? el("span", { class: "verdict" }, "auto would answer with the ", el("strong", {}, "base model"), " (no adapter)")
    : el("span", { class: "verdict" }, "auto would use ", el("code", {}, result.model));
  const ask = el("a", {
    class: "btn small", href: `#playground?model=auto&q=${encodeURIComponent(result.query)}`,
  }, "Ask with auto →");
  return el("div", { class: "card" },
    el("div", { class: "decision" }, chosen, el("span", { class: "chip" }, `${result.router} router`), ask,
      el("p", { class: "why" }, result.reason)),
    result.candidates.length ? candidatesTable(result) : el("p", { class: "muted" }, "The router listed no candidates."));
}

async function run(event) {
  event.preventDefault();
  const query = $("#route-query").value.trim();
  const out = $("#route-result");
  if (!query) {
    $("#route-query").focus();
    return;
  }
  $("#route-run").disabled = true;
  try {
    out.replaceChildren(renderResult(await api("/v1/route", { method: "POST", body: { query } })));
  } catch (error) {
    out.replaceChildren(el("p", { class: "error" }, describeError(error)));
  } finally {
    $("#route-run").disabled = false;
  }
}

function renderExamples() {
  const picks = state.adapters.filter((a) => a.examples && a.examples.length > 1).map((a) => a.examples[1]).slice(0, 4);
  $("#route-examples").replaceChildren(...(picks.length ? [el("span", {}, "Try:"), ...picks.map((text) =>
    el("button", {
      type: "button", class: "chip",
      onclick: () => { $("#route-query").value = text; $("#route-form").requestSubmit(); },
    }, text))] : []));
}

export function initRoute() {
  $("#route-form").addEventListener("submit", run);
  subscribe(renderExamples);
  return { onShow: () => $("#route-query").focus() };
}
