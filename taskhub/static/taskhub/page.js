// What every TaskHub page script shares (the dashboard, dashboard.js; a task's own page,
// task_page.js): the page's config, the DOM and HTTP helpers, the words for a status, a
// retry and the connection. One copy, so the two pages cannot drift apart.
//
// No framework and no build step. Every piece of user data reaches the DOM through
// textContent or an attribute value, never innerHTML: a task titled
// `<img src=x onerror=alert(1)>` is shown as those characters.

import { CLOSE_SERVICE_UNAVAILABLE } from "./protocol-client.js";

/** The page's settings, rendered by the server as JSON (taskhub/pages.py). */
export const config = JSON.parse(document.getElementById("taskhub-config").textContent);

export const STATUS_LABELS = {
  pending: "pending",
  queued: "queued",
  in_progress: "in progress",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
};

export const $ = (id) => document.getElementById(id);

// --- DOM and HTTP -------------------------------------------------------------------------

/** createElement with text set through textContent (never parsed as HTML). */
export function el(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

export class ApiError extends Error {
  constructor(status, data) {
    super(describeError(data) || `Request failed (${status}).`);
    this.status = status;
    this.data = data;
  }
}

/** `{"detail": "..."}` or `{"field": ["message"]}` (the API's one error shape) as a sentence. */
function describeError(data) {
  if (!data || typeof data !== "object") return "";
  if (typeof data.detail === "string") return data.detail;
  return Object.entries(data)
    .map(([field, messages]) => `${field}: ${[].concat(messages).join(" ")}`)
    .join(" ");
}

/** To the sign-in form, and back to this page after. */
export function signIn() {
  window.location.assign(`${config.loginUrl}?next=${encodeURIComponent(window.location.pathname)}`);
}

/** A same-origin JSON request with the session and CSRF token; ApiError on a non-2xx. */
export async function api(method, url, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-CSRFToken"] = cookie("csrftoken");
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    // The session ended (signed out in another tab, expired): sign in again.
    signIn();
    throw new ApiError(401, { detail: "Please sign in again." });
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

const announcer = $("announcer");
/** Tell screen-reader users about a change once (tables are not live regions). */
export function announce(message) {
  announcer.textContent = "";
  // A new text node after a tick, so the same message twice is read twice.
  setTimeout(() => {
    announcer.textContent = message;
  }, 50);
}

// --- Times --------------------------------------------------------------------------------

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

/** A <time>: just the time for today, date and time otherwise; the full value on hover. */
export function timeElement(iso) {
  if (!iso) return el("span", { className: "muted", text: "—" });
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return el("span", { text: iso });
  const today = date.toDateString() === new Date().toDateString();
  const text = today ? timeFormat.format(date) : dateFormat.format(date);
  return el("time", { text, attrs: { datetime: iso, title: dateFormat.format(date) } });
}

/** A comparable key for the API's ISO timestamps, to the microsecond (Date keeps ms only). */
export function tsKey(iso) {
  if (typeof iso !== "string") return "";
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?(Z|[+-]00:00)$/.exec(iso);
  if (!match) return new Date(iso).toISOString();
  return `${match[1]}.${(match[2] || "").padEnd(6, "0")}`;
}

// --- Tasks --------------------------------------------------------------------------------

/** "k of n" under a retry policy (a manual retry may go past max_attempts: then the count). */
export function attemptsText(task) {
  const { attempts, max_attempts: max } = task;
  if (attempts === undefined || attempts === null) return "";
  return max > 1 && attempts <= max ? `${attempts} of ${max}` : String(attempts);
}

/** "retrying in 5 s (attempt 2 of 3)" from a task.updated's `retry` (the retry policy). */
export function retryText(retry) {
  if (!retry || typeof retry !== "object") return "";
  const when = Number.isFinite(Number(retry.in_seconds)) ? `retrying in ${Number(retry.in_seconds)} s` : "retrying";
  return retry.attempt !== undefined && retry.of !== undefined ? `${when} (attempt ${retry.attempt} of ${retry.of})` : when;
}

// --- Connection state ---------------------------------------------------------------------

const CONN_TEXT = {
  idle: "Connecting…",
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Offline",
};

/** The header's connection status (#conn-status) for a ProtocolClient state change. */
export function showConnection(state, code) {
  const connStatus = $("conn-status");
  connStatus.dataset.state = state;
  let text = CONN_TEXT[state] || state;
  if (state === "closed" && code === 4401) text = "Signed out";
  // 4503: the server could not reach Redis or PostgreSQL; the client backs off and retries.
  if (state === "reconnecting" && code === CLOSE_SERVICE_UNAVAILABLE) text = "Server busy, retrying…";
  connStatus.textContent = text;
  document.body.dataset.connection = state;
}
