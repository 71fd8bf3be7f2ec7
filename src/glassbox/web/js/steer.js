// Steer: search features by meaning (/features/search), edit them into a variant with a slider
// and a mode, show it as Ember JSON, save it (/variants), and compare the steered and the
// unsteered answers for the same seed side by side.

import { ApiError, api, el, numberOf, showError, stream } from "./api.js";

const $ = (id) => document.getElementById(id);
const MODES = ["nudge", "pin", "mul", "ablate"];

export function initSteer(shared) {
  const edits = []; // {id, label, index, value, mode}
  const errorBox = $("steer-error");

  shared.variant = () => ({
    base_model: shared.model || "default",
    edits: edits.map((e) => {
      const item = { feature_id: e.id, feature_label: e.label, index_in_sae: e.index, value: e.mode === "ablate" ? 0 : e.value };
      if (e.mode !== "nudge") item.mode = e.mode; // glassbox's extension; Ember only nudges
      return item;
    }),
    scopes: [],
  });

  function showJSON() {
    $("steer-json").textContent = JSON.stringify(shared.variant(), null, 2);
    $("steer-empty").hidden = edits.length > 0;
  }

  function renderEdits() {
    const list = $("steer-edits");
    list.replaceChildren(...edits.map((edit, i) => {
      const slug = `edit-${i}`;
      const output = el("output", { for: `${slug}-value`, text: edit.value.toFixed(2) });
      const slider = el("input", {
        type: "range", id: `${slug}-value`, min: "-2", max: "2", step: "0.05",
        value: String(edit.value), "aria-label": `Value of ${edit.label}`,
        disabled: edit.mode === "ablate",
        oninput: (e) => { edit.value = Number(e.target.value); output.textContent = edit.value.toFixed(2); showJSON(); },
      });
      const mode = el("select", {
        "aria-label": `Mode of ${edit.label}`,
        onchange: (e) => { edit.mode = e.target.value; renderEdits(); },
      }, ...MODES.map((m) => el("option", { value: m, text: m, selected: m === edit.mode })));
      const remove = el("button", {
        type: "button", "aria-label": `Remove ${edit.label}`, text: "Remove",
        onclick: () => { edits.splice(i, 1); renderEdits(); },
      });
      return el("li", { class: "edit" }, el("span", { class: "label", text: edit.label, title: edit.id }),
        mode, slider, output, remove);
    }));
    showJSON();
  }

  function add(feature) {
    if (edits.some((e) => e.id === feature.uuid)) return;
    edits.push({ id: feature.uuid, label: feature.label, index: feature.index_in_sae, value: 0.5, mode: "nudge" });
    renderEdits();
    $("steer-edits").querySelector("li:last-child input[type=range]")?.focus();
  }

  $("steer-search-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    const results = $("steer-results");
    results.replaceChildren(el("li", { class: "hint", text: "searching…" }));
    try {
      const hits = await api("features/search", {
        method: "POST",
        body: { query: $("steer-query").value, session_id: $("steer-namespace").value || "playground", top_k: 10 },
      });
      results.replaceChildren(...hits.map((hit) => el("li", { class: "hit" },
        el("span", { class: "label", text: hit.label }),
        el("span", { class: "score", text: hit.score.toFixed(3), title: "similarity to the query" }),
        el("button", { type: "button", text: "Add", "aria-label": `Add ${hit.label}`, onclick: () => add(hit) }))));
      if (!hits.length) results.replaceChildren(el("li", { class: "hint", text: "no features found" }));
    } catch (error) {
      results.replaceChildren();
      showError(errorBox, error);
    }
  });

  const where = () => [$("steer-namespace").value.trim(), $("steer-variant-id").value.trim()];

  $("steer-save-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    const [ns, id] = where();
    const path = `variants/${encodeURIComponent(ns)}/${encodeURIComponent(id)}`;
    try {
      try {
        await api(path, { method: "PUT", body: { variant: shared.variant() } });
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 404) throw error;
        await api("variants", { method: "POST", body: { session_id: ns, variant_id: id, variant: shared.variant() } });
      }
      $("steer-saved").textContent = `Saved as ${ns}/${id} (use session_id "${ns}", variant_id "${id}").`;
    } catch (error) {
      showError(errorBox, error);
    }
  });

  $("steer-load").addEventListener("click", async () => {
    showError(errorBox, null);
    const [ns, id] = where();
    try {
      const stored = await api(`variants/${encodeURIComponent(ns)}/${encodeURIComponent(id)}`);
      edits.length = 0;
      for (const edit of stored.variant.edits || []) {
        edits.push({ id: edit.feature_id, label: edit.feature_label, index: edit.index_in_sae,
          value: edit.value, mode: edit.mode || "nudge" });
      }
      renderEdits();
      $("steer-saved").textContent = `Loaded ${ns}/${id}.`;
    } catch (error) {
      showError(errorBox, error);
    }
  });

  async function answer(target, variant, base) {
    target.textContent = "";
    target.setAttribute("aria-busy", "true");
    let text = "";
    try {
      await stream("v1/chat/completions", variant ? { ...base, variant } : base, (chunk) => {
        const piece = chunk.choices?.[0]?.delta?.content || "";
        text += piece;
        target.textContent = text;
      });
    } finally {
      target.removeAttribute("aria-busy");
    }
    return text;
  }

  $("steer-compare-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    const verdict = $("steer-verdict");
    verdict.textContent = "";
    const seed = Math.trunc(numberOf($("steer-seed")) ?? 0);
    const base = {
      messages: [{ role: "user", content: $("steer-prompt").value }],
      stream: true, seed,
      temperature: numberOf($("steer-temperature")) ?? 0.7,
      max_tokens: numberOf($("steer-max-tokens")) ?? 48,
    };
    const button = $("steer-compare");
    button.disabled = true;
    try {
      const variant = shared.variant();
      const [plain, steered] = await Promise.all([
        answer($("steer-plain"), null, base),
        answer($("steer-steered"), variant.edits.length ? variant : null, base),
      ]);
      verdict.textContent = !variant.edits.length
        ? "The variant has no edits: both answers are unsteered."
        : plain === steered ? `Same seed (${seed}): the answers are identical.`
          : `Same seed (${seed}): the steered answer differs.`;
    } catch (error) {
      showError(errorBox, error);
    } finally {
      button.disabled = false;
    }
  });

  renderEdits();
}
