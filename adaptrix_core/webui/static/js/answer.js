// One streamed answer: its text as it arrives, then what it cost (tokens, speed) and which adapters answered.

import { ApiError, streamChat } from "./api.js";
import { el, formatMs, formatNumber } from "./dom.js";

/** Elements for the answer's text and its meta line, to be placed by the caller. */
export function answerParts() {
  return { text: el("div", { class: "text" }), meta: el("div", { class: "meta" }) };
}

function metaItems(result) {
  const items = [];
  const usage = result.usage;
  if (usage) items.push(el("span", { title: "prompt + completion tokens" }, `${usage.prompt_tokens} + ${usage.completion_tokens} tokens`));
  if (result.tokensPerSecond !== null) {
    items.push(el("span", { title: "decode speed after the first token" }, `${formatNumber(result.tokensPerSecond, 1)} tok/s`));
  }
  if (result.ttftMs !== null) items.push(el("span", {}, `first token ${formatMs(result.ttftMs)}`));
  items.push(el("span", {}, `total ${formatMs(result.totalMs)}`));
  if (result.finish === "length") items.push(el("span", { title: "stopped at max tokens" }, "max tokens reached"));
  const extra = result.adaptrix;
  if (extra) {
    items.push(el("span", { class: "used" }, "used ", el("code", {}, usedAdapters(extra))));
    if (extra.cold && extra.cold.length) items.push(el("span", {}, `loaded now: ${extra.cold.join(", ")}`));
    if (extra.routing) items.push(el("span", { class: "why" }, `router: ${extra.routing}`));
  }
  return items;
}

/**
 * Stream a chat completion into parts; returns the result, or null when stopped or failed
 * (the meta line then says why).
 */
export async function streamInto(parts, request) {
  parts.text.textContent = "";
  parts.text.classList.add("streaming");
  parts.meta.classList.remove("error");
  parts.meta.replaceChildren(el("span", {}, "waiting for the first token…"));
  try {
    const result = await streamChat({ ...request, onText: (text) => { parts.text.textContent = text; } });
    if (!result.text) parts.text.append(el("span", { class: "muted" }, "(empty answer)"));
    parts.meta.replaceChildren(...metaItems(result));
    return result;
  } catch (error) {
    const stopped = error.name === "AbortError";
    parts.meta.classList.toggle("error", !stopped);
    parts.meta.replaceChildren(el("span", {}, stopped ? "stopped" : describeError(error)));
    return null;
  } finally {
    parts.text.classList.remove("streaming");
  }
}

export function describeError(error) {
  if (error instanceof ApiError) return error.message;
  if (error instanceof TypeError) return "The server cannot be reached. Is adaptrix serve still running?";
  return String(error.message || error);
}

/** The applied selection as the `model` string would name it: "base", "pirate" or "a:0.7+b:0.3". */
function usedAdapters(extra) {
  const names = Array.isArray(extra.adapters) ? extra.adapters : String(extra.adapters || "").split("+").filter(Boolean);
  if (!names.length) return "base";
  const weights = extra.weights || {};
  return names.map((n) => (weights[n] === undefined || weights[n] === 1 ? n : `${n}:${weights[n]}`)).join("+");
}

