// Compose panel: a weight slider per adapter builds the `model` string (`a:0.7+b:0.3`), then answers with it.

import { answerParts, streamInto } from "./answer.js";
import { $, el, formatWeight, toast } from "./dom.js";
import { readSampling, renderSampling } from "./sampling.js";
import { state, subscribe } from "./store.js";

let controller = null;
const weights = new Map(); // adapter name -> weight in [0, 1]

/** The selection string the API takes; weight 1 is written as the bare name, like the server does. */
export function selectionString(entries) {
  const used = entries.filter(([, w]) => w > 0);
  if (!used.length) return "base";
  return used.map(([name, w]) => (w === 1 ? name : `${name}:${formatWeight(w)}`)).join("+");
}

function modelString() {
  return selectionString(state.adapters.map((a) => [a.name, weights.get(a.name) || 0]));
}

function update() {
  $("#compose-model").textContent = modelString();
  for (const row of document.querySelectorAll("#compose-sliders .slider")) {
    const w = weights.get(row.dataset.adapter) || 0;
    row.classList.toggle("off", w === 0);
    row.querySelector("output").textContent = formatWeight(w);
  }
}

let rendered = null; // the adapter names the sliders were built for

function renderSliders({ force = false } = {}) {
  const box = $("#compose-sliders");
  const names = state.adapters.map((a) => a.name).join(",");
  if (!force && names === rendered) {
    update();
    return;
  }
  rendered = names;
  if (!state.adapters.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No adapters in the library."));
    update();
    return;
  }
  box.replaceChildren(...state.adapters.map((a) => {
    const id = `compose-w-${a.name}`;
    const input = el("input", {
      type: "range", id, min: 0, max: 1, step: 0.05, value: weights.get(a.name) || 0,
      "aria-describedby": `${id}-desc`,
    });
    input.addEventListener("input", () => {
      weights.set(a.name, Number(input.value));
      update();
    });
    return el("div", { class: "field slider", dataset: { adapter: a.name } },
      el("div", { class: "range-label" }, el("label", { for: id }, a.name), el("output", { for: id }, "0")),
      input,
      el("p", { class: "hint", id: `${id}-desc` }, a.domain || a.description || ""));
  }));
  update();
}

function setAll(fn) {
  for (const a of state.adapters) weights.set(a.name, fn(weights.get(a.name) || 0));
  renderSliders({ force: true });
}

function normalize() {
  const total = [...weights.values()].reduce((s, w) => s + w, 0);
  if (total > 0) setAll((w) => Math.round((w / total) * 100) / 100);
}

async function run(event) {
  event.preventDefault();
  const prompt = $("#compose-prompt").value.trim();
  if (!prompt) {
    $("#compose-prompt").focus();
    return;
  }
  const model = modelString();
  const parts = answerParts();
  const answer = $("#compose-answer");
  answer.hidden = false;
  answer.replaceChildren(
    el("div", { class: "answer-head" }, el("h2", {}, model),
      el("a", { class: "btn small ghost", href: `#playground?model=${encodeURIComponent(model)}` }, "Chat with this →")),
    parts.text, parts.meta);
  controller = new AbortController();
  $("#compose-run").disabled = true;
  $("#compose-stop").disabled = false;
  await streamInto(parts, {
    model, messages: [{ role: "user", content: prompt }], sampling: readSampling("cmpz"), signal: controller.signal,
  });
  controller = null;
  $("#compose-run").disabled = false;
  $("#compose-stop").disabled = true;
}

export function initCompose() {
  renderSampling($("#compose-form .sampling"), { compact: true });
  renderSliders();
  $("#compose-form").addEventListener("submit", run);
  $("#compose-stop").addEventListener("click", () => controller && controller.abort());
  $("#compose-reset").addEventListener("click", () => setAll(() => 0));
  $("#compose-normalize").addEventListener("click", normalize);
  $("#compose-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(modelString());
      toast("Copied the model string");
    } catch {
      toast("Copy is not allowed here; select the text instead.", "error");
    }
  });
  $("#compose-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#compose-form").requestSubmit();
  });
  subscribe(() => renderSliders());
  return { onShow: () => {} };
}
