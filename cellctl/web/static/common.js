// What every page of the web view shares: the live state (GET /api/state, then the event
// stream /api/events, reconnected when it drops), requests (POST /api/request with the
// X-CSRF-Token header), the message area (refusals and failures stay visible, role="alert"),
// a DOM builder that only ever sets text (never HTML: a tag value may hold "<script>") and
// the formatting of values, times and ages.

/** The live state: me, status, detail and tags, kept current from the event stream. */
export const live = { me: null, status: null, detail: null, tags: {} };

const listeners = [];
let source = null;
let retryMs = 1000;
let skew = 0; // server clock minus this browser's, in seconds (ages are the server's)

/** An element with attributes (on* handlers, booleans, dataset, text) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      node.className = value;
    } else if (key === "text") {
      node.textContent = value;
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
  append(node, children);
  return node;
}

/** An SVG element with attributes. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace a container's children. */
export function fill(container, ...children) {
  container.replaceChildren();
  append(container, children);
  container.removeAttribute("aria-busy");
}

/** Rebuild `container` with `build()` only when `key` changed since the last time (an
 * update that changes nothing there leaves it, and the keyboard focus in it, alone). The
 * element focused before a rebuild is focused again afterwards when one with the same
 * data-focus exists. */
export function keep(container, key, build) {
  if (container.dataset.key === key) return;
  container.dataset.key = key;
  const active = document.activeElement;
  const focused = active && container.contains(active) ? active.dataset.focus : undefined;
  const built = build();
  fill(container, ...(Array.isArray(built) ? built : [built]));
  if (focused !== undefined) {
    const again = [...container.querySelectorAll("[data-focus]")].find(
      (node) => node.dataset.focus === focused,
    );
    if (again) again.focus();
  }
}

/** The page's view container (inside <main>). */
export function view() {
  return document.getElementById("view");
}

// -- roles ---------------------------------------------------------------------------------

const ROLES = ["viewer", "operator", "engineer", "admin"];

/** Whether the user's role is at least `role` (the server checks again: this only decides
 * which buttons exist). */
export function may(role) {
  const mine = live.me ? ROLES.indexOf(live.me.role) : -1;
  return mine >= ROLES.indexOf(role);
}

// -- messages ------------------------------------------------------------------------------

/** Show a message in the message area; `kind`: refused, error or ok. `items`: lines shown as
 * a list under the text (a validator's located problems). Refusals and errors stay until
 * dismissed; a success goes after a while. */
export function say(kind, text, items = []) {
  const area = document.getElementById("messages");
  if (!area) return;
  const word = { refused: "Refused:", error: "Error:", ok: "Done:" }[kind] || "";
  const box = el(
    "div",
    { class: `msg ${kind}` },
    el(
      "p",
      { class: "text" },
      el("span", { class: "what", text: word }),
      " ",
      text,
      items.length ? el("ul", {}, items.map((item) => el("li", { text: item }))) : null,
    ),
    el("button", { type: "button", class: "small", text: "Dismiss", onclick: () => box.remove() }),
  );
  // The newest message only: an operator reads one thing at a time; older ones are stale.
  area.replaceChildren(box);
  if (kind === "ok") {
    setTimeout(() => box.remove(), 6000);
  }
}

/** Remove every message. */
export function unsay() {
  const area = document.getElementById("messages");
  if (area) area.replaceChildren();
}

// -- talking to the server -----------------------------------------------------------------

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute("content") : "";
}

/** GET a JSON resource; on failure the message says why and null is returned. */
export async function getJson(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  } catch (error) {
    say("error", `cannot reach the service (${url}): ${error.message}`);
    return null;
  }
  if (response.status === 401) {
    window.location.assign("/login");
    return null;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    say("error", (body && body.error) || `${url}: HTTP ${response.status}`);
    return null;
  }
  noteClock(response);
  return body;
}

/** Split a refusal's reason into its first line and the located problems under it. */
export function reasonLines(reason) {
  const lines = String(reason || "").split("\n").map((l) => l.trim()).filter(Boolean);
  return [lines[0] || "refused", lines.slice(1)];
}

/** POST a request to the command layer ({action, command?, name?, value?, choice?,
 * parameters?}). Shows the answer (refusal or error in the alert area) and returns it:
 * {accepted: true, result} or {accepted: false, reason, kind}, or null when the request
 * never got an answer. */
export async function request(body, { quiet = false } = {}) {
  let response;
  try {
    response = await fetch("/api/request", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body),
      cache: "no-store",
    });
  } catch (error) {
    say("error", `the request did not reach the service: ${error.message}`);
    return null;
  }
  if (response.status === 401) {
    window.location.assign("/login");
    return null;
  }
  const answer = await response.json().catch(() => null);
  if (answer && answer.accepted === true) {
    if (!quiet) say("ok", answer.result);
    return answer;
  }
  if (answer && answer.accepted === false) {
    const [first, rest] = reasonLines(answer.reason);
    if (!quiet) say("refused", first, rest);
    return answer;
  }
  say("error", (answer && answer.error) || `the service answered HTTP ${response.status}`);
  return null;
}

/** Disable a button while its request is under way (no double press), then enable it. */
export async function pressed(button, body) {
  button.disabled = true;
  try {
    return await request(body);
  } finally {
    button.disabled = false;
  }
}

// -- live updates --------------------------------------------------------------------------

/** Call `fn(what)` after every change: "state", "status", "detail" or "tags" (with the
 * changed tags' names as a second argument). */
export function onChange(fn) {
  listeners.push(fn);
}

function changed(what, names) {
  for (const fn of listeners) {
    try {
      fn(what, names);
    } catch (error) {
      // A page's own fault is shown, never a silent console error with a frozen page.
      say("error", `the page failed to show an update: ${error.message}`);
    }
  }
}

function connection(text, up) {
  const node = document.getElementById("conn");
  if (!node) return;
  node.textContent = text;
  node.classList.toggle("live", up);
  node.classList.toggle("down", !up);
}

function takeState(state) {
  live.me = state.me;
  live.status = state.status;
  live.detail = state.detail;
  live.tags = state.tags || {};
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta && state.me && state.me.csrf) meta.setAttribute("content", state.me.csrf);
  const name = document.getElementById("cell-name");
  if (name && state.status) name.textContent = state.status.cell;
  changed("state");
}

function noteClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isFinite(date)) {
    const offset = date / 1000 - Date.now() / 1000;
    // The Date header has whole seconds: correct only a real difference of clocks.
    skew = Math.abs(offset) >= 2 ? offset : 0;
  }
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    say("error", `a malformed update from the service (${event.type})`);
    return undefined;
  }
}

function openEvents() {
  source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    retryMs = 1000;
    connection("live", true);
  });
  source.addEventListener("state", (event) => {
    const state = parse(event);
    if (state !== undefined) takeState(state);
  });
  source.addEventListener("status", (event) => {
    const status = parse(event);
    if (status === undefined) return;
    live.status = status;
    changed("status");
  });
  source.addEventListener("detail", (event) => {
    const detail = parse(event);
    if (detail === undefined) return;
    live.detail = detail;
    changed("detail");
  });
  source.addEventListener("tags", (event) => {
    const tags = parse(event);
    if (tags === undefined || tags === null) return;
    Object.assign(live.tags, tags);
    changed("tags", Object.keys(tags));
  });
  source.addEventListener("error", () => {
    connection("reconnecting…", false);
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (an HTTP error: a session that expired, a server restarting):
      // ask again after a while, and go to the login page when the session is gone.
      source = null;
      setTimeout(reconnect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    }
  });
}

async function reconnect() {
  let response;
  try {
    response = await fetch("/api/state", { cache: "no-store" });
  } catch {
    setTimeout(reconnect, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
    return;
  }
  if (response.status === 401) {
    window.location.assign("/login");
    return;
  }
  openEvents();
}

/** Fetch the state, show it, then follow the event stream. */
export async function start() {
  const state = await getJson("/api/state");
  if (state) takeState(state);
  openEvents();
  // Ages and elapsed times move on without events.
  setInterval(() => changed("tick"), 1000);
}

// -- formatting ----------------------------------------------------------------------------

/** Now on the server's clock, in seconds since the epoch. */
export function now() {
  return Date.now() / 1000 + skew;
}

/** A tag value as text: null as "—", numbers in their shortest form. */
export function fmtValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return String(value);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** A duration in seconds as a person reads it: 0.4 s, 12 s, 3 min 04 s, 2 h 05 min. */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  }
  const minutes = Math.floor((s % 3600) / 60);
  return `${Math.floor(s / 3600)} h ${String(minutes).padStart(2, "0")} min`;
}

/** How long ago `at` (seconds since the epoch) was. */
export function fmtAge(at) {
  if (!at) return "—";
  return fmtDuration(now() - at);
}

/** A time (seconds since the epoch) as the local date and time. */
export function fmtTime(at) {
  if (!at) return "—";
  return new Date(at * 1000).toLocaleString();
}
