// The server's own endpoints: JSON calls, server-sent-event streams, and the API / admin key prompt.
//
// Keys live in sessionStorage only: they are gone when the tab closes and never reach disk as cookies.
// Each is sent as `Authorization: Bearer KEY`; admin calls send the admin key once one was asked for.

import { $ } from "./dom.js";

const API_KEY = "adaptrix.apiKey";
const ADMIN_KEY = "adaptrix.adminKey";

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let apiKeyAccepted = false; // some call succeeded with the current API key (or none was needed)
let pendingPrompt = null; // one dialog at a time, shared by every call waiting for it
const keyListeners = new Set();

export function onKeysChanged(listener) {
  keyListeners.add(listener);
}

export function hasKeys() {
  return Boolean(sessionStorage.getItem(API_KEY) || sessionStorage.getItem(ADMIN_KEY));
}

export function forgetKeys() {
  sessionStorage.removeItem(API_KEY);
  sessionStorage.removeItem(ADMIN_KEY);
  apiKeyAccepted = false;
  keyListeners.forEach((listener) => listener());
}

/** The bearer token: the admin key for admin calls (load, unload, pin) once known, else the API key. */
function headersFor(admin, json) {
  const headers = json ? { "Content-Type": "application/json" } : {};
  const key = (admin && sessionStorage.getItem(ADMIN_KEY)) || sessionStorage.getItem(API_KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

/**
 * fetch() with this server's keys; on 401/403 ask for the missing key and try again.
 * Returns the Response once it is OK; throws ApiError otherwise (or when the prompt is cancelled).
 */
export async function send(path, { method = "GET", body, admin = false, signal } = {}) {
  for (;;) {
    const response = await fetch(path, {
      method,
      headers: headersFor(admin, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
    if (response.ok) {
      if (!admin) apiKeyAccepted = true;
      return response;
    }
    const error = await errorOf(response);
    // admin_disabled: the server takes no admin key at all, so asking for one cannot help
    if ((response.status !== 401 && response.status !== 403) || error.code === "admin_disabled") throw error;
    const needsAdmin = admin && (response.status === 403 || apiKeyAccepted || error.code !== "invalid_api_key");
    await askKey(needsAdmin ? "admin" : "api", error.message);
  }
}

export async function api(path, options) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/** Show the key dialog; resolves once a key is stored, rejects when the user cancels. */
export function askKey(kind, message = "") {
  if (pendingPrompt) return pendingPrompt;
  const dialog = $("#key-dialog");
  const form = $("#key-form");
  const input = $("#key-input");
  const error = $("#key-error");
  const admin = kind === "admin";
  const storage = admin ? ADMIN_KEY : API_KEY;
  const hadKey = Boolean(sessionStorage.getItem(storage));
  $("#key-title").textContent = admin ? "Admin key required" : "API key required";
  $("#key-label").textContent = admin ? "Admin key" : "API key";
  $("#key-text").textContent = admin
    ? "Loading, unloading and pinning adapters need this server's admin key."
    : "This server requires an API key for every request.";
  error.hidden = !hadKey;
  error.textContent = hadKey ? `That key was refused: ${message}` : "";
  input.value = "";

  pendingPrompt = new Promise((resolve, reject) => {
    const finish = (ok) => {
      form.removeEventListener("submit", onSubmit);
      $("#key-cancel").removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      pendingPrompt = null;
      if (ok) {
        keyListeners.forEach((listener) => listener());
        resolve();
      } else {
        reject(new ApiError(401, `${admin ? "Admin" : "API"} key needed: ${message}`, "key_prompt_cancelled"));
      }
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(storage, key);
      if (!admin) apiKeyAccepted = false;
      finish(true);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(false);
    };
    form.addEventListener("submit", onSubmit);
    $("#key-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return pendingPrompt;
}

/** The data: payloads of a server-sent-event response, parsed as JSON, until [DONE]. */
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

/**
 * Stream one chat completion. onText(fullText) is called as pieces arrive.
 * Resolves to {text, finish, usage, adaptrix, ttftMs, totalMs, tokensPerSecond}.
 */
export async function streamChat({ model, messages, sampling = {}, signal, onText }) {
  const started = performance.now();
  const response = await send("/v1/chat/completions", {
    method: "POST",
    body: { model, messages, stream: true, stream_options: { include_usage: true }, ...sampling },
    signal,
  });
  let text = "";
  let first = null;
  let finish = null;
  let usage = null;
  let adaptrix = null;
  for await (const chunk of events(response)) {
    if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code);
    if (chunk.adaptrix) adaptrix = chunk.adaptrix;
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices && chunk.choices[0];
    if (!choice) continue;
    const piece = choice.delta && choice.delta.content;
    if (piece) {
      if (first === null) first = performance.now();
      text += piece;
      if (onText) onText(text);
    }
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  const ended = performance.now();
  const tokens = usage ? usage.completion_tokens : null;
  // decode speed: tokens after the first one over the time after the first one
  const decodeMs = first === null ? null : ended - first;
  return {
    text,
    finish,
    usage,
    adaptrix,
    ttftMs: first === null ? null : first - started,
    totalMs: ended - started,
    tokensPerSecond: tokens > 1 && decodeMs > 0 ? (tokens - 1) / (decodeMs / 1000) : null,
  };
}
