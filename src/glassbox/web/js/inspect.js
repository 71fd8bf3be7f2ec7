// Inspect: a pasted conversation through /features/inspect: the token x feature heatmap, and
// the top features by each aggregation (frequency, mean, max, sum).

import { api, el, numberOf, showError } from "./api.js";
import { shown } from "./tokens.js";

const $ = (id) => document.getElementById(id);
const AGGREGATIONS = ["frequency", "mean", "max", "sum"];

/** "user: …" / "assistant: …" / "system: …" lines (a line without a prefix continues the
 * message above), or a JSON list of messages; plain text is one user message. */
export function parseConversation(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith("[")) return JSON.parse(trimmed);
  const messages = [];
  for (const line of trimmed.split("\n")) {
    const match = /^\s*(user|assistant|system)\s*:\s?(.*)$/i.exec(line);
    if (match) messages.push({ role: match[1].toLowerCase(), content: match[2] });
    else if (messages.length) messages[messages.length - 1].content += `\n${line}`;
    else messages.push({ role: "user", content: line });
  }
  return messages;
}

function heatmap(result) {
  const features = result.features;
  const scale = features.map((_, j) => Math.max(1e-9, ...result.matrix.map((row) => Math.abs(row[j]))));
  const head = el("tr", {}, el("th", { scope: "col", text: "token" }),
    ...features.map((f) => el("th", { scope: "col", class: "feature", title: f.label }, el("span", { text: f.label }))));
  const rows = result.tokens.map((token, i) => el("tr", {},
    el("th", { scope: "row", class: "mono", text: shown(token) }),
    ...features.map((f, j) => {
      const value = result.matrix[i][j];
      const alpha = Math.min(1, Math.abs(value) / scale[j]);
      return el("td", {
        title: `${shown(token)} · ${f.label}: ${value.toFixed(3)}`,
        style: `background-color: rgba(111, 66, 193, ${(0.85 * alpha).toFixed(3)})`,
        class: alpha > 0.55 ? "dark" : null,
        text: value ? value.toFixed(2) : "",
      });
    })));
  return el("table", { class: "heatmap" }, el("thead", {}, head), el("tbody", {}, ...rows));
}

export function initInspect() {
  const errorBox = $("inspect-error");
  $("inspect-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    let messages;
    try {
      messages = parseConversation($("inspect-text").value);
    } catch (error) {
      showError(errorBox, new Error(`The conversation is not a JSON list of messages: ${error.message}`));
      return;
    }
    const topK = Math.trunc(numberOf($("inspect-top-k")) ?? 12);
    const chosen = $("inspect-aggregate").value;
    const ask = (aggregate, matrix) => api("features/inspect", {
      method: "POST",
      body: { messages, session_id: "playground", top_k: topK, aggregate_by: aggregate, include_matrix: matrix },
    });
    const map = $("inspect-heatmap");
    map.replaceChildren(el("p", { class: "hint", text: "reading the features…" }));
    try {
      const main = await ask(chosen, true);
      map.replaceChildren(heatmap(main));
      const others = await Promise.all(AGGREGATIONS.map((a) => (a === chosen ? main : ask(a, false))));
      $("inspect-aggregations").replaceChildren(...others.map((r, k) => el("figure", { class: "agg" },
        el("figcaption", { text: `by ${AGGREGATIONS[k]}` }),
        el("ol", {}, ...r.features.map((f) => el("li", {},
          el("span", { class: "label", text: f.label }), el("span", { class: "num", text: f.activation.toFixed(3) })))))));
    } catch (error) {
      map.replaceChildren();
      showError(errorBox, error);
    }
  });
}
