// Small DOM and formatting helpers shared by every panel (text is always set as text, never as HTML).

export const $ = (selector, root = document) => root.querySelector(selector);

/** Create an element: el("button", {class: "btn", onclick: fn}, "Label", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

export function formatNumber(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Weights as the API writes them: 0.7, 0.35, 1 (at most two decimals, no trailing zeros). */
export function formatWeight(w) {
  return String(Number(w.toFixed(2)));
}

export function toast(message, kind = "info") {
  const node = el("div", { class: `toast ${kind}` }, message);
  document.getElementById("toasts").append(node);
  setTimeout(() => node.remove(), kind === "error" ? 7000 : 3500);
}

/** Label and range input with a live value readout. */
export function rangeField({ id, label, min, max, step, value, hint }) {
  const input = el("input", { type: "range", id, min, max, step, value });
  const output = el("output", { for: id }, String(value));
  input.addEventListener("input", () => { output.textContent = input.value; });
  return el("div", { class: "field" },
    el("div", { class: "range-label" }, el("label", { for: id }, label), output),
    input,
    hint ? el("p", { class: "hint" }, hint) : null);
}

export function numberField({ id, label, min, max, step = 1, value = "", placeholder = "" }) {
  return el("div", { class: "field" },
    el("label", { for: id }, label),
    el("input", { type: "number", id, min, max, step, value, placeholder, inputmode: "numeric" }));
}
