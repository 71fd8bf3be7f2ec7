// The HTTP side of the page: JSON calls and SSE streams to the same server, the API key
// (asked for on a 401, kept in sessionStorage only), and errors as the API words them.

const KEY = "glassbox.apiKey";

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
    this.param = body?.error?.param ?? null;
    this.code = body?.error?.code ?? null;
  }
}

let asking = null; // the one key prompt open at a time, shared by the calls that wait on it

function storedKey() {
  return sessionStorage.getItem(KEY);
}

/** Show the key dialog; resolves true once a key is entered, false when cancelled. */
function askKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason;
  input.value = "";
  asking = new Promise((resolve) => {
    const done = (ok) => {
      dialog.removeEventListener("close", onClose);
      cancel.removeEventListener("click", onCancel);
      asking = null;
      resolve(ok);
    };
    const onClose = () => {
      const key = input.value.trim();
      if (dialog.returnValue === "ok" && key) {
        sessionStorage.setItem(KEY, key);
        done(true);
      } else done(false);
    };
    const cancel = document.getElementById("key-cancel");
    const onCancel = () => { dialog.returnValue = "cancel"; dialog.close(); };
    dialog.addEventListener("close", onClose);
    cancel.addEventListener("click", onCancel);
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
  return asking;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): the status line is all there is
  }
  const message = body?.error?.message ?? (typeof body?.detail === "string" ? body.detail : null)
    ?? `${response.status} ${response.statusText}`;
  return new ApiError(message, response.status, body);
}

/** fetch() against the server with the key; a 401 asks for a key (unless `ask` is false)
 * and retries once with it. Non-2xx answers throw ApiError with the API's message. */
export async function send(path, { method = "GET", body, signal, ask = true, accept } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    const key = storedKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (accept) headers.Accept = accept;
    const response = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.ok) return response;
    const error = await errorOf(response);
    if (response.status === 401 && ask && attempt < 3) {
      if (key) sessionStorage.removeItem(KEY);
      if (await askKey(error.message)) continue;
    }
    throw error;
  }
}

export async function api(path, options = {}) {
  const response = await send(path, options);
  if (response.status === 204) return null;
  return response.json();
}

/** POST a streaming request; calls onEvent(json) for each SSE data event until [DONE].
 * An error event in the stream (OpenAI's shape) throws ApiError with its message. */
export async function stream(path, body, onEvent, signal) {
  const response = await send(path, { method: "POST", body, signal, accept: "text/event-stream" });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  const dispatch = () => {
    if (!data.length) return false;
    const text = data.join("\n");
    data = [];
    if (text === "[DONE]") return true;
    const event = JSON.parse(text);
    if (event && event.error) throw new ApiError(event.error.message, 200, event);
    onEvent(event);
    return false;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.search(/\r?\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer[newline] === "\r" ? 2 : 1));
      if (line === "") {
        if (dispatch()) { await reader.cancel(); return; }
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      } // comments (": ping") and other fields are ignored
    }
  }
  dispatch();
}

/** Show an error (ApiError or any Error) in a view's error region; null clears it. */
export function showError(element, error) {
  if (!error) {
    element.textContent = "";
    return;
  }
  if (error.name === "AbortError") return;
  element.textContent = error.message || String(error);
}

/** An element with text and attributes; children appended. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** A number input's value, or null when empty. */
export function numberOf(input) {
  const text = input.value.trim();
  if (text === "") return null;
  const value = Number(text);
  return Number.isFinite(value) ? value : null;
}
