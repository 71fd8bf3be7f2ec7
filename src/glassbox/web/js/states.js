// States: the tree of KV states (/states): create, fork at a token, continue
// (/generate/token with commit), roll back, diff two branches, and the attention heatmap of
// a layer and head (/analysis/attention).

import { api, el, numberOf, showError, stream } from "./api.js";
import { paint, shown, tabStop, tokenSpan, wireTokens } from "./tokens.js";

const $ = (id) => document.getElementById(id);

export function initStates() {
  const errorBox = $("state-error");
  let states = []; // summaries
  let current = null; // the selected state's object
  let attention = null;

  wireTokens($("state-tokens"));

  async function listAll() {
    const all = [];
    let after = null;
    for (let page = 0; page < 10; page++) {
      const query = new URLSearchParams({ limit: "100" });
      if (after) query.set("after", after);
      const found = await api(`states?${query}`);
      all.push(...found.data);
      if (!found.has_more) break;
      after = found.last_id;
    }
    return all;
  }

  function label(s) {
    return `${s.id.slice(0, 14)} · ${s.num_tokens} tokens · ${s.location}`;
  }

  function renderTree() {
    const children = new Map();
    const ids = new Set(states.map((s) => s.id));
    for (const s of states) {
      const parent = s.parent_id && ids.has(s.parent_id) ? s.parent_id : null;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(s);
    }
    const branch = (parent) => el("ul", {}, ...(children.get(parent) || []).map((s) => el("li", {},
      el("button", {
        type: "button", class: "node", "data-state": s.id, text: label(s),
        "aria-current": current && current.id === s.id ? "true" : null,
        onclick: () => select(s.id),
      }),
      children.has(s.id) ? branch(s.id) : null)));
    const tree = $("state-tree");
    tree.replaceChildren(states.length ? branch(null) : el("p", { class: "hint", text: "No states yet." }));
    for (const id of ["state-diff-a", "state-diff-b"]) {
      const select = $(id);
      const was = select.value;
      select.replaceChildren(...states.map((s) => el("option", { value: s.id, text: label(s) })));
      if (ids.has(was)) select.value = was;
    }
  }

  async function refresh() {
    states = await listAll();
    renderTree();
  }

  async function select(id) {
    showError(errorBox, null);
    try {
      current = await api(`states/${encodeURIComponent(id)}`);
      $("state-current-id").textContent = current.id;
      $("state-hint").textContent = `${current.num_tokens} tokens, KV in ${current.location}. Click a token to keep the tokens up to it.`;
      renderTree();
      await showTokens();
    } catch (error) {
      showError(errorBox, error);
    }
  }

  async function showTokens() {
    const box = $("state-tokens");
    const ids = current.token_ids;
    const [first, scored] = await Promise.all([
      api("detokenize", { method: "POST", body: { tokens: ids.slice(0, 1) } }),
      api(`analysis/tokens/${encodeURIComponent(current.id)}?top_k=5`),
    ]);
    const tokens = [{ text: first.prompt, logprob: null, top: [] }];
    for (const t of scored.tokens) {
      tokens.push({ text: t.text, logprob: t.logprob, top: (t.top || []).map((a) => ({ token: a.text ?? a.token, logprob: a.logprob })) });
    }
    box.replaceChildren(...tokens.map((token, i) => {
      const span = tokenSpan(token);
      span.dataset.index = String(i + 1);
      span.addEventListener("click", () => pick(i + 1));
      span.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(i + 1); } });
      return span;
    }));
    paint(box, tokens, "logprob");
    tabStop(box);
    pick(ids.length);
  }

  function pick(index) {
    $("state-index").value = String(index);
    $("state-tokens").querySelectorAll("span.tok").forEach((span) => {
      span.classList.toggle("cut", Number(span.dataset.index) > index);
    });
  }
  $("state-index").addEventListener("input", () => pick(numberOf($("state-index")) ?? 0));

  async function act(work) {
    showError(errorBox, null);
    if (!current) {
      showError(errorBox, new Error("Select a state first."));
      return;
    }
    try {
      const next = await work();
      await refresh();
      if (next) await select(next);
    } catch (error) {
      showError(errorBox, error);
    }
  }

  const index = () => {
    const n = numberOf($("state-index"));
    return n === null ? null : Math.trunc(n);
  };

  $("state-fork").addEventListener("click", () => act(async () => {
    const forked = await api(`states/${encodeURIComponent(current.id)}/fork`, { method: "POST", body: { token_index: index() } });
    return forked.id;
  }));
  $("state-rollback").addEventListener("click", () => act(async () => {
    const rolled = await api(`states/${encodeURIComponent(current.id)}/rollback`, { method: "POST", body: { token_index: index() } });
    return rolled.id;
  }));
  $("state-delete").addEventListener("click", () => act(async () => {
    await api(`states/${encodeURIComponent(current.id)}`, { method: "DELETE" });
    current = null;
    $("state-current-id").textContent = "";
    $("state-tokens").replaceChildren();
    return null;
  }));

  $("state-continue-form").addEventListener("submit", (e) => {
    e.preventDefault();
    act(async () => {
      const out = $("state-continued");
      out.textContent = "";
      const body = {
        state_id: current.id, stream: true, commit: true,
        max_tokens: Math.trunc(numberOf($("state-max-tokens")) ?? 16),
        temperature: numberOf($("state-temperature")) ?? 0.7,
      };
      const seed = numberOf($("state-seed"));
      if (seed !== null) body.seed = Math.trunc(seed);
      let child = null;
      await stream("generate/token", body, (event) => {
        if (event.text) out.textContent += event.text;
        if (event.child_state_id) child = event.child_state_id;
      });
      return child;
    });
  });

  $("state-create-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    const text = $("state-text").value;
    const body = $("state-as-chat").checked ? { messages: [{ role: "user", content: text }] } : { text };
    try {
      const made = await api("states", { method: "POST", body });
      await refresh();
      await select(made.id);
    } catch (error) {
      showError(errorBox, error);
    }
  });
  $("state-refresh").addEventListener("click", () => refresh().catch((error) => showError(errorBox, error)));

  $("state-diff-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    const a = $("state-diff-a").value;
    const b = $("state-diff-b").value;
    const out = $("state-diff");
    try {
      const diff = await api(`states/${encodeURIComponent(a)}/diff/${encodeURIComponent(b)}`);
      out.replaceChildren(
        el("p", { class: "hint", text: `${diff.common_prefix_tokens} tokens in common` +
          (diff.common_ancestor_id ? `; common ancestor ${diff.common_ancestor_id}` : "") }),
        el("div", { class: "diff-text" }, el("span", { class: "common", text: diff.common_text })),
        el("div", { class: "diff-text" }, el("strong", { text: "A: " }), el("ins", { class: "a", text: diff.a.text || "(nothing more)" })),
        el("div", { class: "diff-text" }, el("strong", { text: "B: " }), el("ins", { class: "b", text: diff.b.text || "(nothing more)" })),
      );
    } catch (error) {
      out.replaceChildren();
      showError(errorBox, error);
    }
  });

  const canvas = $("state-attention");
  function draw() {
    const n = attention.tokens.length;
    const size = Math.min(420, Math.max(240, n * 14));
    const cell = size / n;
    canvas.width = size;
    canvas.height = size;
    const ctx = canvas.getContext("2d");
    let max = 1e-9;
    for (const row of attention.weights) for (const w of row) max = Math.max(max, w);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size, size);
    attention.weights.forEach((row, q) => row.forEach((w, k) => {
      const t = w / max;
      ctx.fillStyle = `rgb(${Math.round(255 - 225 * t)}, ${Math.round(255 - 200 * t)}, ${Math.round(255 - 90 * t)})`;
      ctx.fillRect(k * cell, q * cell, Math.ceil(cell), Math.ceil(cell));
    }));
  }
  canvas.addEventListener("mousemove", (e) => {
    if (!attention) return;
    const rect = canvas.getBoundingClientRect();
    const n = attention.tokens.length;
    const k = Math.floor(((e.clientX - rect.left) / rect.width) * n);
    const q = Math.floor(((e.clientY - rect.top) / rect.height) * n);
    if (q < 0 || k < 0 || q >= n || k >= n) return;
    $("state-attention-note").textContent =
      `query ${q} "${shown(attention.tokens[q])}" → key ${k} "${shown(attention.tokens[k])}": ${attention.weights[q][k].toFixed(4)}`;
  });
  $("state-attention-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    if (!current) {
      showError(errorBox, new Error("Select a state first."));
      return;
    }
    const body = { layer: Math.trunc(numberOf($("state-layer")) ?? 0), format: "json" };
    const head = numberOf($("state-head"));
    if (head !== null) body.head = Math.trunc(head);
    try {
      attention = await api(`analysis/attention/${encodeURIComponent(current.id)}`, { method: "POST", body });
      draw();
      $("state-attention-note").textContent =
        `layer ${attention.layer}, ${attention.head === null ? "mean of the heads" : `head ${attention.head}`}: rows are queries, columns keys (hover for a weight)`;
    } catch (error) {
      showError(errorBox, error);
    }
  });

  return { refresh: () => refresh().catch((error) => showError(errorBox, error)) };
}
