// Compare panel: one prompt answered side by side; the requests leave together so the server batches them.

import { answerParts, streamInto } from "./answer.js";
import { $, el } from "./dom.js";
import { readSampling, renderSampling } from "./sampling.js";
import { state, subscribe } from "./store.js";

let controller = null;

function renderChoices() {
  const box = $("#compare-models");
  const before = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const names = ["base", ...state.adapters.map((a) => a.name)];
  const shown = [...box.querySelectorAll("input")].map((i) => i.value);
  if (names.join(",") === shown.join(",")) return;
  const fresh = shown.length <= 1; // first render with adapters: base and the first adapter
  box.replaceChildren(...names.map((name, i) => {
    const checked = fresh ? i < 2 : before.has(name);
    return el("label", { class: "check" },
      el("input", { type: "checkbox", name: "compare-model", value: name, checked }), name);
  }));
}

function selected() {
  return [...document.querySelectorAll("#compare-models input:checked")].map((i) => i.value);
}

async function run(event) {
  event.preventDefault();
  const prompt = $("#compare-prompt").value.trim();
  const models = selected();
  const results = $("#compare-results");
  if (!prompt) {
    $("#compare-prompt").focus();
    return;
  }
  if (!models.length) {
    results.replaceChildren(el("p", { class: "error" }, "Choose at least one model to answer."));
    return;
  }
  controller = new AbortController();
  $("#compare-run").disabled = true;
  $("#compare-stop").disabled = false;
  const sampling = readSampling("cmp");
  const columns = models.map((model) => {
    const parts = answerParts();
    const card = el("article", { class: "card answer", dataset: { model }, "aria-label": `Answer from ${model}` },
      el("div", { class: "answer-head" }, el("h2", {}, model)), parts.text, parts.meta);
    return { model, parts, card };
  });
  results.replaceChildren(...columns.map((c) => c.card));
  const messages = [{ role: "user", content: prompt }];
  // started in the same tick: they reach the scheduler within its batching window
  await Promise.all(columns.map((c) =>
    streamInto(c.parts, { model: c.model, messages, sampling, signal: controller.signal })));
  controller = null;
  $("#compare-run").disabled = false;
  $("#compare-stop").disabled = true;
}

export function initCompare() {
  renderSampling($("#compare-form .sampling"), { compact: true });
  renderChoices();
  $("#compare-form").addEventListener("submit", run);
  $("#compare-stop").addEventListener("click", () => controller && controller.abort());
  $("#compare-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#compare-form").requestSubmit();
  });
  subscribe(renderChoices);
  return { onShow: () => $("#compare-prompt").focus() };
}
