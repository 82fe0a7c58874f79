// What every panel shares: the server's health, the adapters (live cache state merged with library details).

import { api } from "./api.js";

// admin: "open", "key" or "off" (load/unload/pin disabled) as /v1/stats reports it; null when it does not say
export const state = { health: null, adapters: [], admin: null };
const listeners = new Set();

export function subscribe(listener) {
  listeners.add(listener);
}

function notify() {
  listeners.forEach((listener) => listener(state));
}

export async function refreshHealth() {
  state.health = await api("/health");
  const stats = await api("/v1/stats").catch(() => null);
  state.admin = (stats && stats.server && stats.server.admin) || null;
  notify();
  return state.health;
}

/** GET /v1/adapters (resident, pinned, hits) merged with /ui/api/adapters (rank, targets, size, source). */
export async function refreshAdapters() {
  const [live, details] = await Promise.all([
    api("/v1/adapters"),
    api("/ui/api/adapters").catch(() => ({ data: [] })),
  ]);
  const byName = new Map(details.data.map((d) => [d.name, d]));
  state.adapters = live.data.map((a) => ({ ...byName.get(a.name), ...a, cache: a.cache || null }));
  notify();
  return state.adapters;
}

export function adapterNames() {
  return state.adapters.map((a) => a.name);
}

/** Example prompts from the adapters' metadata, one per adapter first. */
export function examplePrompts(limit = 4) {
  const picked = [];
  for (const a of state.adapters) {
    if (a.examples && a.examples.length) picked.push({ adapter: a.name, text: a.examples[0] });
  }
  return picked.slice(0, limit);
}
