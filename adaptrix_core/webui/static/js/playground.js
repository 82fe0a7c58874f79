// Playground panel: a streaming chat with the base model, an adapter, a composition or `auto`.

import { answerParts, streamInto } from "./answer.js";
import { $, el } from "./dom.js";
import { readSampling, renderSampling } from "./sampling.js";
import { examplePrompts, state, subscribe } from "./store.js";

const conversation = []; // {role, content} of finished turns
let controller = null; // AbortController of the answer being streamed

function modelSelect() {
  return $("#pg-model");
}

/** Rebuild the picker (base, auto, every adapter, and a custom composition if one is chosen), keeping the choice. */
function renderPicker(extra = null) {
  const select = modelSelect();
  const current = extra || select.value || "base";
  const option = (value, label) => el("option", { value }, label);
  const names = state.adapters.map((a) => a.name);
  const custom = current && !["base", "auto", ...names].includes(current) ? current : null;
  select.replaceChildren(
    el("optgroup", { label: "Model" }, option("base", "base (no adapter)"), option("auto", "auto (router decides)")),
    names.length ? el("optgroup", { label: "Adapters" }, ...names.map((n) => option(n, n))) : null,
    custom ? el("optgroup", { label: "Composition" }, option(custom, custom)) : null,
  );
  select.value = current;
  if (!select.value) select.value = "base";
  renderHint();
}

function renderHint() {
  const value = modelSelect().value;
  const adapter = state.adapters.find((a) => a.name === value);
  let hint;
  if (value === "base") hint = `The base model alone${state.health ? ` (${state.health.model})` : ""}.`;
  else if (value === "auto") hint = "The router picks the adapter for each message; the Route panel shows why.";
  else if (adapter) hint = adapter.description;
  else hint = "A weighted composition of adapters.";
  $("#pg-model-hint").textContent = hint;
}

/** Choose a model from elsewhere (the Library's "Try it", the Compose panel). */
export function useModel(model) {
  renderPicker(model);
}

function renderEmpty() {
  const log = $("#chat-log");
  if (conversation.length || log.querySelector(".msg")) return;
  const starters = examplePrompts(4).map((ex) =>
    el("button", {
      type: "button", class: "chip", title: `Ask ${ex.adapter}`,
      onclick: () => { renderPicker(ex.adapter); $("#chat-input").value = ex.text; send(); },
    }, `${ex.adapter}: ${ex.text}`));
  log.replaceChildren(el("div", { class: "starters" },
    el("p", {}, "Pick an adapter on the right and say something, or start from an example."),
    starters.length ? el("div", { class: "chips" }, ...starters) : null));
}

function setStreaming(on) {
  const button = $("#chat-send");
  button.textContent = on ? "Stop" : "Send";
  button.classList.toggle("primary", !on);
  $("#chat-clear").disabled = on;
}

async function send() {
  if (controller) {
    controller.abort();
    return;
  }
  const input = $("#chat-input");
  const content = input.value.trim();
  if (!content) {
    input.focus();
    return;
  }
  const log = $("#chat-log");
  const starters = log.querySelector(".starters");
  if (starters) starters.remove();
  const model = modelSelect().value;
  const parts = answerParts();
  log.append(
    el("div", { class: "msg user" }, el("div", { class: "bubble text" }, content)),
    el("div", { class: "msg assistant" }, el("div", { class: "who" }, el("strong", {}, model)), parts.text, parts.meta),
  );
  input.value = "";
  log.scrollTop = log.scrollHeight;
  const system = $("#pg-system").value.trim();
  const messages = [...(system ? [{ role: "system", content: system }] : []), ...conversation, { role: "user", content }];
  controller = new AbortController();
  setStreaming(true);
  const follow = new MutationObserver(() => { log.scrollTop = log.scrollHeight; });
  follow.observe(parts.text, { childList: true, characterData: true, subtree: true });
  const result = await streamInto(parts, { model, messages, sampling: readSampling("pg"), signal: controller.signal });
  follow.disconnect();
  controller = null;
  setStreaming(false);
  // a failed or stopped turn stays on screen but is not sent again
  if (result) conversation.push({ role: "user", content }, { role: "assistant", content: result.text });
  log.scrollTop = log.scrollHeight;
  input.focus();
}

function clear() {
  conversation.length = 0;
  $("#chat-log").replaceChildren();
  renderEmpty();
  $("#chat-input").focus();
}

export function initPlayground() {
  renderSampling($("#pg-settings .sampling"));
  renderPicker();
  renderEmpty();
  modelSelect().addEventListener("change", renderHint);
  $("#chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("#chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!controller) send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) controller.abort();
  });
  $("#chat-clear").addEventListener("click", clear);
  subscribe(() => {
    renderPicker();
    renderEmpty();
  });
  return {
    onShow: (params) => {
      if (params.get("model")) renderPicker(params.get("model"));
      if (params.get("q")) $("#chat-input").value = params.get("q");
      $("#chat-input").focus();
    },
  };
}
