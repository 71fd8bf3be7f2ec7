// Sessions: the chat sessions (/llm/chat/sessions/), one's history, and a new turn in it.

import { api, el, showError, stream } from "./api.js";

const $ = (id) => document.getElementById(id);

export function initSessions() {
  const errorBox = $("session-error");
  let current = null;

  function message(sender, content) {
    return el("div", { class: `msg ${sender}` }, el("div", { class: "role", text: sender }),
      el("div", { class: "body", text: content }));
  }

  async function refresh() {
    showError(errorBox, null);
    try {
      const found = await api("llm/chat/sessions/?limit=50");
      const list = $("sessions-list");
      list.replaceChildren(...found.data.map((s) => el("li", { class: "hit" },
        el("button", {
          type: "button", class: "node", "aria-current": s.session_id === current ? "true" : null,
          text: `${s.session_id.slice(0, 14)} · ${s.user_id} · ${s.message_count} messages`,
          onclick: () => open(s.session_id),
        }),
        el("span", { class: "score", text: new Date(s.last_active).toLocaleString() }))));
      if (!found.data.length) list.replaceChildren(el("li", { class: "hint", text: "No sessions yet." }));
    } catch (error) {
      showError(errorBox, error);
    }
  }

  async function open(id) {
    showError(errorBox, null);
    try {
      const messages = await api(`llm/chat/${encodeURIComponent(id)}/history/`);
      current = id;
      $("session-current").textContent = id;
      $("session-history").replaceChildren(...messages.map((m) => message(m.sender, m.content)));
      $("session-input").placeholder = "Message to this session (Enter sends)";
      await refresh();
    } catch (error) {
      showError(errorBox, error);
    }
  }

  $("sessions-refresh").addEventListener("click", refresh);
  $("session-start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    try {
      const started = await api("llm/chat/", {
        method: "POST",
        body: { user_id: $("session-user").value, initial_message: $("session-first").value, max_tokens: 64 },
      });
      await open(started.session_id);
    } catch (error) {
      showError(errorBox, error);
    }
  });

  const form = $("session-send-form");
  const input = $("session-input");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(errorBox, null);
    const text = input.value.trim();
    if (!current) {
      showError(errorBox, new Error("Select or start a session first."));
      return;
    }
    if (!text) return;
    input.value = "";
    const history = $("session-history");
    history.append(message("user", text));
    const reply = message("assistant", "");
    history.append(reply);
    const body = reply.querySelector(".body");
    try {
      await stream(`llm/chat/${encodeURIComponent(current)}/message/`, { user_message: text, stream: true }, (event) => {
        if (event.delta) body.textContent += event.delta;
      });
      await refresh();
    } catch (error) {
      showError(errorBox, error);
    }
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  return { refresh };
}
