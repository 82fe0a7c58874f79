// Start-up: connect to the server (asking for the API key when it needs one), then show the panel in the URL hash.

import { forgetKeys, hasKeys, onKeysChanged } from "./api.js";
import { describeError } from "./answer.js";
import { initCompare } from "./compare.js";
import { initCompose } from "./compose.js";
import { $, toast } from "./dom.js";
import { initLibrary } from "./library.js";
import { initPlayground } from "./playground.js";
import { initRoute } from "./route.js";
import { initStats } from "./stats.js";
import { refreshAdapters, refreshHealth } from "./store.js";

const PANELS = ["library", "playground", "compare", "compose", "route", "stats"];
const TITLES = { library: "Library", playground: "Playground", compare: "Compare", compose: "Compose", route: "Route", stats: "Stats" };
const controllers = {};
let current = null;
let connected = false; // panels start fetching only once the server answered (and the key, if any, is known)

/** "#playground?model=pirate" -> ["playground", URLSearchParams{model: pirate}] */
function parseHash() {
  const [name, query = ""] = location.hash.replace(/^#/, "").split("?");
  return [PANELS.includes(name) ? name : "library", new URLSearchParams(query)];
}

function show() {
  const [name, params] = parseHash();
  if (current && current !== name && controllers[current].onHide) controllers[current].onHide();
  const moved = current !== name;
  current = name;
  for (const panel of PANELS) $(`#panel-${panel}`).hidden = panel !== name;
  for (const link of document.querySelectorAll(".tabs a")) {
    if (link.dataset.panel === name) {
      link.setAttribute("aria-current", "page");
      link.scrollIntoView({ block: "nearest", inline: "nearest" }); // the tab bar scrolls at phone width
    } else {
      link.removeAttribute("aria-current");
    }
  }
  document.title = `${TITLES[name]} · Adaptrix`;
  if (moved) window.scrollTo(0, 0);
  if (connected) controllers[name].onShow(params);
}

function setConnection(ok, text) {
  const conn = $("#conn");
  conn.classList.toggle("ok", ok);
  conn.classList.toggle("bad", !ok);
  conn.querySelector(".conn-text").textContent = text;
  conn.title = text;
}

/** Resolves true once /health and the adapters answered; false (and a retry button) otherwise. */
async function connect() {
  setConnection(false, "Connecting");
  try {
    const health = await refreshHealth();
    $("#model-name").textContent = health.model;
    $("#model-name").title = `Base model: ${health.model}`;
    await refreshAdapters();
    setConnection(true, "Connected");
    return true;
  } catch (error) {
    setConnection(false, "Not connected · retry");
    toast(describeError(error), "error");
    return false;
  }
}

async function start() {
  if (await connect()) {
    connected = true;
    controllers[current].onShow(parseHash()[1]);
  }
}

function shortcuts(event) {
  if (event.altKey && !event.ctrlKey && !event.metaKey && /^[1-6]$/.test(event.key)) {
    event.preventDefault();
    location.hash = `#${PANELS[Number(event.key) - 1]}`;
  }
}

function init() {
  controllers.library = initLibrary();
  controllers.playground = initPlayground();
  controllers.compare = initCompare();
  controllers.compose = initCompose();
  controllers.route = initRoute();
  controllers.stats = initStats();
  const forget = $("#forget-keys");
  const syncForget = () => { forget.hidden = !hasKeys(); };
  onKeysChanged(syncForget);
  syncForget();
  forget.addEventListener("click", () => {
    forgetKeys();
    toast("Keys forgotten in this tab.");
    connected = false;
    start();
  });
  window.addEventListener("hashchange", show);
  document.addEventListener("keydown", shortcuts);
  show();
  $("#conn").addEventListener("click", () => { if (!connected) start(); });
  start();
}

init();
