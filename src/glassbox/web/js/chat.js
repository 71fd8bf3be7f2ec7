// Chat: streamed answers from /v1/chat/completions with sampling settings and a seed; every
// generated token coloured by its logprob or by a feature's activation (the `readout`
// extension: each token's top features, streamed beside logprobs).

import { ApiError, el, numberOf, showError, stream } from "./api.js";
import { paint, tabStop, tokenSpan, wireTokens } from "./tokens.js";

const $ = (id) => document.getElementById(id);

export function initChat(shared) {
  const log = $("chat-log");
  const form = $("chat-form");
  const input = $("chat-input");
  const sendButton = $("chat-send");
  const stopButton = $("chat-stop");
  const colour = $("chat-colour");
  const errorBox = $("chat-error");
  const history = []; // {role, content} as sent to the API
  const answers = []; // {container, tokens} of each assistant message
  let controller = null;
  let readoutRefused = null; // the API's words when the server cannot read features

  wireTokens(log);

  const mode = () => colour.value;
  const repaint = () => answers.forEach((a) => paint(a.container, a.tokens, mode()));

  function refreshFeatureOptions() {
    const best = new Map(); // feature id -> {label, max activation}
    for (const a of answers) {
      for (const t of a.tokens) {
        for (const f of t.features || []) {
          const seen = best.get(f.id);
          if (!seen || f.activation > seen.max) best.set(f.id, { label: f.label, max: f.activation });
        }
      }
    }
    const current = colour.value;
    const options = [...best.entries()].sort((a, b) => b[1].max - a[1].max).slice(0, 40);
    colour.replaceChildren(
      el("option", { value: "logprob", text: "logprob" }),
      el("option", { value: "none", text: "nothing" }),
      ...options.map(([id, f]) => el("option", { value: `feature:${id}`, text: `feature: ${f.label}` })),
    );
    colour.value = [...colour.options].some((o) => o.value === current) ? current : "logprob";
    const hint = $("chat-colour-hint");
    if (readoutRefused) {
      hint.textContent = `Feature readout is not available here: ${readoutRefused}`;
    } else if (options.length) {
      hint.textContent = "Hover or focus a token (arrow keys move between tokens) to see its top alternatives and features; pick a feature above to colour by its activation.";
    }
  }
  colour.addEventListener("change", repaint);

  function bubble(role, content) {
    const body = el("div", { class: "body" });
    if (content !== undefined) body.textContent = content;
    const node = el("div", { class: `msg ${role}` }, el("div", { class: "role", text: role }), body);
    log.append(node);
    log.scrollTop = log.scrollHeight;
    return body;
  }

  function body() {
    const messages = [];
    const system = $("chat-system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const req = {
      messages,
      stream: true,
      logprobs: true,
      temperature: numberOf($("chat-temperature")) ?? 1,
      top_p: numberOf($("chat-top-p")) ?? 1,
      max_tokens: numberOf($("chat-max-tokens")) ?? 128,
    };
    const seed = numberOf($("chat-seed"));
    if (seed !== null) req.seed = Math.trunc(seed);
    const alternatives = numberOf($("chat-top-logprobs")) ?? 0;
    if (alternatives > 0) req.top_logprobs = Math.trunc(alternatives);
    const features = numberOf($("chat-readout")) ?? 0;
    if (features > 0 && !readoutRefused && shared.featuresReady) {
      req.readout = { features: Math.trunc(features) };
    }
    if ($("chat-steered").checked) {
      const variant = shared.variant();
      if (variant.edits.length) req.variant = variant;
    }
    return req;
  }

  async function ask(answer, signal) {
    let text = "";
    const readouts = [];
    const onEvent = (chunk) => {
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      const content = choice.delta?.content || "";
      text += content;
      const entries = choice.logprobs?.content || [];
      for (const entry of entries) {
        const token = { text: entry.token, logprob: entry.logprob, top: entry.top_logprobs || [] };
        answer.tokens.push(token);
        answer.container.append(tokenSpan(token));
      }
      if (!entries.length && content) { // a backend without logprobs: the text as it comes
        const token = { text: content, logprob: null, top: [] };
        answer.tokens.push(token);
        answer.container.append(tokenSpan(token));
      }
      readouts.push(...(choice.readout || []));
      readouts.forEach((r, i) => {
        if (answer.tokens[i] && !answer.tokens[i].features) answer.tokens[i].features = r.features;
      });
      paint(answer.container, answer.tokens, mode());
      log.scrollTop = log.scrollHeight;
    };
    await stream("v1/chat/completions", body(), onEvent, signal);
    return text;
  }

  async function submit() {
    const message = input.value.trim();
    if (!message || controller) return;
    showError(errorBox, null);
    input.value = "";
    history.push({ role: "user", content: message });
    bubble("user", message);
    const container = bubble("assistant");
    container.classList.add("tokens");
    const answer = { container, tokens: [] };
    answers.push(answer);
    controller = new AbortController();
    sendButton.disabled = true;
    stopButton.disabled = false;
    log.setAttribute("aria-busy", "true");
    try {
      let text;
      try {
        text = await ask(answer, controller.signal);
      } catch (error) {
        const aboutReadout = error instanceof ApiError && (error.param || "").startsWith("readout");
        if (!aboutReadout || answer.tokens.length) throw error;
        readoutRefused = error.message; // e.g. no feature dictionaries: answer without them
        text = await ask(answer, controller.signal);
      }
      history.push({ role: "assistant", content: text });
      if (!answer.tokens.length) container.textContent = "(empty answer)";
    } catch (error) {
      showError(errorBox, error);
      const partial = answer.tokens.map((t) => t.text).join("");
      if (partial) history.push({ role: "assistant", content: partial });
      else history.pop(); // nothing came: the message can be sent again
      if (error.name === "AbortError") container.append(el("em", { text: " (stopped)" }));
    } finally {
      controller = null;
      sendButton.disabled = false;
      stopButton.disabled = true;
      log.removeAttribute("aria-busy");
      const note = readoutRefused ? "no feature readout on this server"
        : shared.featuresReady ? null : "features were still loading (see the header)";
      for (const t of answer.tokens) {
        if (!t.features && note) t.featuresNote = note;
      }
      tabStop(container);
      refreshFeatureOptions();
      repaint();
      input.focus();
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  stopButton.addEventListener("click", () => controller?.abort());
  $("chat-clear").addEventListener("click", () => {
    controller?.abort();
    history.length = 0;
    answers.length = 0;
    log.replaceChildren();
    showError(errorBox, null);
    refreshFeatureOptions();
  });

  input.disabled = false;
  sendButton.disabled = false;
  performance.mark("glassbox:interactive"); // the browser tests time the first view by it
}
