// The playground's entry: the views as tabs (the URL's #hash names the open one), the
// server's health and live metrics in the header.

import { send } from "./api.js";
import { initChat } from "./chat.js";
import { initInspect } from "./inspect.js";
import { initSessions } from "./sessions.js";
import { initStates } from "./states.js";
import { initSteer } from "./steer.js";

const $ = (id) => document.getElementById(id);
const VIEWS = ["chat", "steer", "inspect", "states", "sessions"];

// model: the served model's name; featuresReady: the feature dictionaries are built (until
// then chat asks for no readout, so that no answer waits for the build).
const shared = {
  model: null,
  featuresReady: false,
  variant: () => ({ base_model: "default", edits: [], scopes: [] }),
};

initSteer(shared);
initChat(shared);
initInspect();
const states = initStates();
const sessions = initSessions();
const onOpen = { states: states.refresh, sessions: sessions.refresh };

function open(view, focus = false) {
  if (!VIEWS.includes(view)) view = "chat";
  for (const name of VIEWS) {
    const tab = $(`tab-${name}`);
    const selected = name === view;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    $(`view-${name}`).hidden = !selected;
  }
  if (focus) $(`tab-${view}`).focus();
  if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
  onOpen[view]?.();
}

for (const name of VIEWS) {
  const tab = $(`tab-${name}`);
  tab.addEventListener("click", () => open(name));
  tab.addEventListener("keydown", (e) => {
    const i = VIEWS.indexOf(name);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: VIEWS.length - 1 }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    open(VIEWS[(next + VIEWS.length) % VIEWS.length], true);
  });
}
window.addEventListener("hashchange", () => open(location.hash.slice(1)));
open(location.hash.slice(1) || "chat");

// Health and metrics: polled while the page is visible; never asks for a key by itself.
let last = null; // {tokens, at}
async function poll() {
  if (document.hidden) return;
  const dot = $("health-dot");
  const text = $("health-text");
  try {
    const health = await (await send("health", { ask: false })).json();
    shared.model = health.model;
    shared.featuresReady = health.features.ready;
    dot.className = "dot ok";
    const features = health.features.ready ? "features ready" : `features: ${health.features.stage}`;
    text.textContent = `${health.model} · ${features}`;
    $("m-running").textContent = health.running;
    $("m-waiting").textContent = health.waiting;
    $("m-kv").textContent = `${health.kv_blocks_used} / ${health.kv_blocks_total}`;
  } catch (error) {
    dot.className = "dot bad";
    text.textContent = error.status === 401 ? "health needs an API key" : (error.message || "unreachable");
    return;
  }
  try {
    const body = await (await send("metrics", { ask: false })).text();
    const match = /^glassbox_generation_tokens_total(?:\{[^}]*\})?\s+(\S+)/m.exec(body);
    if (match) {
      const now = { tokens: Number(match[1]), at: performance.now() };
      if (last) {
        const rate = (now.tokens - last.tokens) / ((now.at - last.at) / 1000);
        $("m-tps").textContent = rate >= 0 ? rate.toFixed(1) : "–";
      }
      last = now;
    }
  } catch {
    $("m-tps").textContent = "–"; // /metrics closed to the page: the rest still shows
  }
}
poll();
setInterval(poll, 2000);
