// Generated tokens as spans coloured by logprob or by a feature's activation, with a
// tooltip (hover or keyboard focus) of their top alternatives and top features.
// A token: {text, logprob, top: [{token, logprob}], features: [{id, label, activation}]}.

import { el } from "./api.js";

const tooltip = () => document.getElementById("tooltip");

export function shown(text) {
  return JSON.stringify(text).slice(1, -1);
}

function format(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

/** The colour of a token: by "logprob" (red unlikely … green likely), "none", or
 * "feature:<id>" (the token's activation of that feature over `scale`, the largest one). */
export function colourOf(token, mode, scale) {
  if (mode === "logprob") {
    if (token.logprob === null || token.logprob === undefined) return "";
    const p = Math.exp(token.logprob);
    return `hsla(${Math.round(120 * p)}, 75%, 50%, ${0.15 + 0.35 * (1 - p)})`;
  }
  if (mode.startsWith("feature:")) {
    const value = activationOf(token, mode.slice(8));
    if (!value || !scale) return "";
    const alpha = Math.max(0, Math.min(1, value / scale));
    return `rgba(111, 66, 193, ${(0.08 + 0.72 * alpha).toFixed(3)})`;
  }
  return "";
}

export function activationOf(token, featureId) {
  const found = (token.features || []).find((f) => f.id === featureId);
  return found ? found.activation : 0;
}

/** Paint the spans of `container` for `mode` (their tokens are in span.token). */
export function paint(container, tokens, mode) {
  let scale = 0;
  if (mode.startsWith("feature:")) {
    const id = mode.slice(8);
    for (const t of tokens) scale = Math.max(scale, activationOf(t, id));
  }
  container.querySelectorAll("span.tok").forEach((span) => {
    span.style.backgroundColor = colourOf(span.token, mode, scale);
  });
}

export function tokenSpan(token) {
  const span = el("span", { class: "tok", tabindex: "-1", text: token.text });
  span.token = token;
  return span;
}

function tooltipContent(token) {
  const box = tooltip();
  box.replaceChildren();
  const head = el("div", { class: "tt-head" }, el("code", { text: `"${shown(token.text)}"` }));
  if (token.logprob !== null && token.logprob !== undefined) {
    head.append(` logprob ${format(token.logprob)} · p ${format(Math.exp(token.logprob))}`);
  }
  box.append(head);
  if (token.top && token.top.length) {
    const rows = token.top.map((alt) =>
      el("tr", {}, el("td", {}, el("code", { text: `"${shown(alt.token)}"` })),
        el("td", { class: "num", text: format(Math.exp(alt.logprob)) })));
    box.append(el("div", { class: "tt-title", text: "Top alternatives (p)" }),
      el("table", {}, el("tbody", {}, ...rows)));
  }
  if (token.features && token.features.length) {
    const rows = token.features.map((f) =>
      el("tr", {}, el("td", { text: f.label }), el("td", { class: "num", text: format(f.activation, 2) })));
    box.append(el("div", { class: "tt-title", text: "Top features (activation)" }),
      el("table", {}, el("tbody", {}, ...rows)));
  } else if (token.featuresNote) {
    box.append(el("div", { class: "tt-title", text: token.featuresNote }));
  }
}

function showTooltip(span) {
  const box = tooltip();
  tooltipContent(span.token);
  box.hidden = false;
  const rect = span.getBoundingClientRect();
  const width = box.offsetWidth;
  const left = Math.min(window.innerWidth - width - 8, Math.max(8, rect.left));
  let top = rect.bottom + 6;
  if (top + box.offsetHeight > window.innerHeight - 8) top = rect.top - box.offsetHeight - 6;
  box.style.left = `${left + window.scrollX}px`;
  box.style.top = `${top + window.scrollY}px`;
  span.setAttribute("aria-describedby", "tooltip");
}

function hideTooltip(span) {
  tooltip().hidden = true;
  if (span) span.removeAttribute("aria-describedby");
}

/** Hover and focus show the tooltip; inside a message the arrow keys, Home and End move
 * between tokens (one tab stop per message: its first token, or the one last focused). */
export function wireTokens(root) {
  root.addEventListener("mouseover", (e) => {
    const span = e.target.closest?.("span.tok");
    if (span) showTooltip(span);
  });
  root.addEventListener("mouseout", (e) => {
    const span = e.target.closest?.("span.tok");
    if (span && document.activeElement !== span) hideTooltip(span);
  });
  root.addEventListener("focusin", (e) => {
    if (e.target.matches?.("span.tok")) showTooltip(e.target);
  });
  root.addEventListener("focusout", (e) => {
    if (e.target.matches?.("span.tok")) hideTooltip(e.target);
  });
  root.addEventListener("keydown", (e) => {
    const span = e.target;
    if (!span.matches?.("span.tok")) return;
    const all = [...span.parentElement.querySelectorAll("span.tok")];
    const i = all.indexOf(span);
    const next = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1,
      Home: 0, End: all.length - 1 }[e.key];
    if (e.key === "Escape") { hideTooltip(span); return; }
    if (next === undefined || next < 0 || next >= all.length) return;
    e.preventDefault();
    span.tabIndex = -1;
    all[next].tabIndex = 0;
    all[next].focus();
  });
}

/** Make the first token span of `container` its tab stop (when none is). */
export function tabStop(container) {
  const spans = container.querySelectorAll("span.tok");
  if (spans.length && ![...spans].some((s) => s.tabIndex === 0)) spans[0].tabIndex = 0;
}
