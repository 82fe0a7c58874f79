// Sampling settings (temperature, top_p, max tokens, seed), rendered into any `.sampling[data-prefix]` box.

import { numberField, rangeField } from "./dom.js";

const DEFAULTS = { temperature: 0.7, top_p: 0.95, max_tokens: 128 };

export function renderSampling(container, { compact = false } = {}) {
  const p = container.dataset.prefix;
  const fields = [
    rangeField({ id: `${p}-temperature`, label: "Temperature", min: 0, max: 2, step: 0.05, value: DEFAULTS.temperature,
      hint: compact ? null : "0 is greedy: the same answer every time." }),
    compact ? null : rangeField({ id: `${p}-top-p`, label: "Top p", min: 0.05, max: 1, step: 0.05, value: DEFAULTS.top_p }),
    numberField({ id: `${p}-max-tokens`, label: "Max tokens", min: 1, max: 4096, value: DEFAULTS.max_tokens }),
    numberField({ id: `${p}-seed`, label: "Seed", min: 0, placeholder: "random" }),
  ];
  container.replaceChildren(...fields.filter(Boolean));
  return container;
}

/** The request fields for the box with this prefix; empty or invalid numbers fall back to the defaults. */
export function readSampling(prefix) {
  const value = (name) => document.getElementById(`${prefix}-${name}`);
  const out = { temperature: Number(value("temperature").value) };
  const topP = value("top-p");
  out.top_p = topP ? Number(topP.value) : DEFAULTS.top_p;
  const maxTokens = parseInt(value("max-tokens").value, 10);
  out.max_tokens = Number.isFinite(maxTokens) && maxTokens > 0 ? maxTokens : DEFAULTS.max_tokens;
  const seed = parseInt(value("seed").value, 10);
  if (Number.isFinite(seed)) out.seed = seed;
  return out;
}
