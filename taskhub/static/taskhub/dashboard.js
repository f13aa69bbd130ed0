// The TaskHub dashboard: tasks, live status, search, notifications; the chat is chat.js.
//
// No framework and no build step; the helpers both pages use are page.js's, and like
// them, every piece of user data reaches the DOM through textContent or an attribute value,
// never innerHTML.
//
// State flow: the REST API gives the current state once; the /ws socket (protocol-client.js)
// keeps it current. Each task keeps the newest `updated_at` it was shown with, so an older
// event arriving after a newer REST read (or the other way round) never moves a row back.

import { startChat } from "./chat.js";
import {
  $,
  STATUS_LABELS,
  announce,
  api,
  attemptsText,
  config,
  el,
  retryText,
  showConnection,
  timeElement,
  tsKey,
} from "./page.js";
import { ProtocolClient } from "./protocol-client.js";

// The state machine's sets come from the server (taskhub/pages.py), never a copy here.
const TERMINAL = new Set(config.statuses.terminal);
const CANCELLABLE = new Set(config.statuses.cancellable);
const RETRYABLE = new Set(config.statuses.retryable);

// --- Small helpers of this page -----------------------------------------------------------

/** A task result in one line: `key: value, ...` for an object, JSON otherwise. */
function summarizeResult(result) {
  if (typeof result === "string") return result;
  if (result && typeof result === "object" && !Array.isArray(result)) {
    return Object.entries(result)
      .map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`)
      .join(", ");
  }
  return JSON.stringify(result);
}

function shorten(text, limit = 140) {
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

// --- Tasks --------------------------------------------------------------------------------

const tasks = new Map(); // id -> task (REST shape, plus what events add)
const rows = new Map(); // id -> {row, cells...}
const pendingAction = new Map(); // id -> "cancel" | "retry" while a request is in flight
const tasksBody = $("tasks-body");
const tasksEmpty = $("tasks-empty");
const tasksLoading = $("tasks-loading");
const tasksMore = $("tasks-more");
let nextPageUrl = null;

function buildRow(id) {
  const row = el("tr", { attrs: { "data-task-id": id } });
  const cells = {
    // The title is the row header, so a screen reader names each cell by its task.
    title: el("th", { className: "cell-title", attrs: { scope: "row", "data-label": "Title" } }),
    kind: el("td", { attrs: { "data-label": "Kind" } }),
    status: el("td", { attrs: { "data-label": "Status" } }),
    progress: el("td", { className: "cell-progress", attrs: { "data-label": "Progress" } }),
    attempts: el("td", { className: "cell-attempts", attrs: { "data-label": "Attempts" } }),
    created: el("td", { attrs: { "data-label": "Created" } }),
    updated: el("td", { attrs: { "data-label": "Updated" } }),
    outcome: el("td", { className: "cell-outcome", attrs: { "data-label": "Result or error" } }),
    actions: el("td", { className: "cell-actions", attrs: { "data-label": "Actions" } }),
  };
  const badge = el("span", { className: "badge" });
  cells.status.append(badge);
  const bar = el("progress", { attrs: { max: 100, value: 0 } });
  const percent = el("span", { className: "percent" });
  cells.progress.append(bar, percent);
  const cancel = el("button", { className: "button button--small button--danger", text: "Cancel", attrs: { type: "button", "data-action": "cancel" } });
  const retry = el("button", { className: "button button--small", text: "Retry", attrs: { type: "button", "data-action": "retry" } });
  cells.actions.append(cancel, retry);
  row.append(cells.title, cells.kind, cells.status, cells.progress, cells.attempts, cells.created, cells.updated, cells.outcome, cells.actions);
  const entry = { row, cells, badge, bar, percent, cancel, retry };
  rows.set(id, entry);
  return entry;
}

function renderTask(task) {
  const entry = rows.get(task.id) || buildRow(task.id);
  const { row, cells, badge, bar, percent, cancel, retry } = entry;
  row.dataset.status = task.status;

  // The title opens the task's own page (taskhub/static/taskhub/task_page.js).
  const link = el("a", { className: "title-text", text: task.title, attrs: { href: `/tasks/${encodeURIComponent(task.id)}/` } });
  cells.title.replaceChildren(link);
  if (task.description) cells.title.append(el("span", { className: "desc", text: shorten(task.description, 90) }));
  cells.kind.textContent = task.kind || "";

  badge.className = `badge badge--${task.status}`;
  badge.dataset.status = task.status;
  badge.textContent = STATUS_LABELS[task.status] || task.status;
  cells.status.querySelector(".retry-note")?.remove();
  if (task.retry) cells.status.append(el("span", { className: "retry-note", text: retryText(task.retry) }));
  cells.attempts.textContent = attemptsText(task);
  row.hidden = !matchesFilters(task);

  const progress = Math.max(0, Math.min(100, Number(task.progress) || 0));
  bar.value = progress;
  bar.setAttribute("aria-label", `Progress of ${task.title}`);
  percent.textContent = `${progress}%`;

  cells.created.replaceChildren(timeElement(task.created_at));
  cells.updated.replaceChildren(timeElement(task.finished_at && TERMINAL.has(task.status) ? task.finished_at : task.updated_at));

  cells.outcome.replaceChildren();
  if (task.status === "completed" && task.result !== undefined && task.result !== null) {
    const text = summarizeResult(task.result);
    cells.outcome.append(el("span", { className: "result", text: shorten(text), attrs: { title: JSON.stringify(task.result) } }));
  } else if ((task.status === "failed" || task.status === "cancelled") && task.error) {
    cells.outcome.append(el("span", { className: "error-text", text: shorten(task.error), attrs: { title: task.error } }));
  }

  const busy = pendingAction.get(task.id);
  cancel.hidden = !CANCELLABLE.has(task.status);
  cancel.disabled = Boolean(busy) || task.cancelRequested === true;
  cancel.textContent = task.cancelRequested ? "Cancelling…" : "Cancel";
  cancel.setAttribute("aria-label", `Cancel task ${task.title}`);
  retry.hidden = !RETRYABLE.has(task.status);
  retry.disabled = Boolean(busy);
  retry.setAttribute("aria-label", `Retry task ${task.title}`);
  return entry;
}

function placeRow(entry, { atTop }) {
  if (entry.row.parentNode) return;
  if (atTop) tasksBody.prepend(entry.row);
  else tasksBody.append(entry.row);
  tasksEmpty.hidden = true;
}

/**
 * Merge a task state (a REST task or a task.updated payload) into the table. A state older
 * than what the row shows is ignored; returns the merged task or null.
 */
function mergeTask(incoming, { atTop = true } = {}) {
  const id = incoming.id || incoming.task_id;
  if (!id || deletedTasks.has(id)) return null;
  const known = tasks.get(id);
  if (known && tsKey(incoming.updated_at) < tsKey(known.updated_at)) {
    // An older state: keep the newer status, but take the fields events do not carry
    // (description, params, created_at...) from it, e.g. a POST reply that came late.
    let added = false;
    for (const [key, value] of Object.entries(incoming)) {
      if (!(key in known) && key !== "task_id") {
        known[key] = value;
        added = true;
      }
    }
    if (added) renderTask(known);
    return null;
  }
  const merged = { ...(known || {}), ...incoming, id };
  delete merged.task_id;
  if (!merged.created_at) merged.created_at = incoming.updated_at;
  // A task that moved on no longer has a cancel in flight; result/error belong to one status.
  if (known && known.status !== merged.status) merged.cancelRequested = false;
  if (merged.status !== "completed") delete merged.result;
  // An automatic retry's wait: the event's `retry`; a REST read of a task waiting for its
  // next attempt has only its error and attempts (docs/protocol.md, "Retries").
  if (incoming.retry) merged.retry = incoming.retry;
  else if (merged.status === "pending" && !incoming.task_id && incoming.error && merged.attempts > 1) {
    merged.retry = { attempt: merged.attempts, of: merged.max_attempts, error: incoming.error };
  } else delete merged.retry;
  if (merged.status !== "failed" && merged.status !== "cancelled") merged.error = "";
  tasks.set(id, merged);
  const entry = renderTask(merged);
  placeRow(entry, { atTop });
  if (known && known.status !== merged.status && TERMINAL.has(merged.status)) {
    announce(`Task ${merged.title} ${STATUS_LABELS[merged.status]}.`);
  }
  return merged;
}

function onTaskUpdated(frame) {
  const data = frame.data || {};
  if (!data.task_id) return;
  mergeTask({ ...data, id: data.task_id });
}

// Tasks an operator deleted: a REST page read before the delete may still list one.
const deletedTasks = new Set();

function onTaskDeleted(frame) {
  const data = frame.data || {};
  if (!data.task_id) return;
  deletedTasks.add(data.task_id);
  tasks.delete(data.task_id);
  pendingAction.delete(data.task_id);
  const entry = rows.get(data.task_id);
  rows.delete(data.task_id);
  if (entry) {
    entry.row.remove();
    announce(`Task ${data.title || ""} was deleted.`);
  }
  tasksEmpty.hidden = tasks.size > 0;
}

function onTaskProgress(frame) {
  const data = frame.data || {};
  const task = tasks.get(data.task_id);
  if (!task || TERMINAL.has(task.status)) return; // progress after the end is stale
  const progress = Number(data.progress);
  if (!Number.isFinite(progress)) return;
  task.progress = progress;
  if (data.status) task.status = data.status;
  renderTask(task);
}

// --- Filters: the list's status and kind (the API's ?status= and ?kind=) ------------------

const filterStatus = $("filter-status");
const filterKind = $("filter-kind");

function matchesFilters(task) {
  return (!filterStatus.value || task.status === filterStatus.value) && (!filterKind.value || task.kind === filterKind.value);
}

function listUrl() {
  const query = new URLSearchParams({ ordering: "-created_at", page_size: "50" });
  if (filterStatus.value) query.set("status", filterStatus.value);
  if (filterKind.value) query.set("kind", filterKind.value);
  return `/api/tasks/?${query}`;
}

// A changed filter reads the list again; events keep arriving for every task, and a row
// whose task no longer matches (or a new one that does not) is hidden, not dropped.
filterStatus.addEventListener("change", () => reloadTasks());
filterKind.addEventListener("change", () => reloadTasks());

async function loadTasks(url = listUrl()) {
  tasksLoading.hidden = false;
  try {
    const page = await api("GET", url);
    for (const task of page.results || []) mergeTask(task, { atTop: false });
    nextPageUrl = page.next || null;
    tasksMore.hidden = !nextPageUrl;
    tasksEmpty.hidden = [...rows.values()].some((entry) => !entry.row.hidden);
    tasksEmpty.textContent = filterStatus.value || filterKind.value ? "No tasks match these filters." : "No tasks yet. Create one above.";
  } catch (error) {
    announce(`Could not load your tasks: ${error.message}`);
    showTaskListError(error.message);
  } finally {
    tasksLoading.hidden = true;
  }
}

/** Re-read the list from scratch (the server's event log cannot fill our gap). */
async function reloadTasks() {
  tasks.clear();
  rows.clear();
  tasksBody.replaceChildren();
  await loadTasks();
}

function showTaskListError(message) {
  tasksLoading.hidden = false;
  tasksLoading.textContent = message;
}

tasksMore.addEventListener("click", async () => {
  if (!nextPageUrl) return;
  tasksMore.disabled = true;
  // Follow the API's own next link, but only on this origin.
  const next = new URL(nextPageUrl, window.location.href);
  await loadTasks(next.pathname + next.search);
  tasksMore.disabled = false;
});

tasksBody.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const id = button.closest("tr")?.dataset.taskId;
  const task = tasks.get(id);
  if (!task) return;
  const action = button.dataset.action;
  pendingAction.set(id, action);
  renderTask(task);
  try {
    const updated = await api("POST", `/api/tasks/${encodeURIComponent(id)}/${action}/`);
    pendingAction.delete(id);
    if (action === "cancel" && updated.status === "in_progress") {
      // Accepted: the runner stops the processor at its next step and reports `cancelled`.
      task.cancelRequested = true;
    }
    mergeTask(updated);
    renderTask(tasks.get(id));
    announce(action === "cancel" ? `Cancelling task ${task.title}.` : `Task ${task.title} will run again.`);
  } catch (error) {
    pendingAction.delete(id);
    renderTask(task);
    announce(`Could not ${action} task ${task.title}: ${error.message}`);
    showFormError($("task-form-error"), `Could not ${action} “${task.title}”: ${error.message}`);
  }
});

// --- New task form ------------------------------------------------------------------------

const taskForm = $("task-form");
const taskFormError = $("task-form-error");

function showFormError(node, message) {
  node.textContent = message;
}

function markInvalid(field, invalid) {
  if (invalid) field.setAttribute("aria-invalid", "true");
  else field.removeAttribute("aria-invalid");
}

// The params help and the prefilled params follow the chosen kind (each processor declares
// them: tasks/processors/registry.py kind_forms). Params the user typed are kept.
const kindSelect = $("task-kind");
const paramsField = $("task-params");
let paramsPrefill = "";

function showKindForm() {
  const form = config.kindForms?.[kindSelect.value] || { help: "", defaults: {} };
  const help = $("task-params-help");
  help.replaceChildren(el("span", { text: `For ${kindSelect.value}: ` }), el("span", { text: form.help }));
  const text = Object.keys(form.defaults || {}).length ? JSON.stringify(form.defaults) : "{}";
  if (!paramsField.value.trim() || paramsField.value === paramsPrefill) paramsField.value = text;
  paramsPrefill = text;
}

kindSelect.addEventListener("change", showKindForm);
showKindForm();

taskForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = $("task-title");
  const params = $("task-params");
  const timeout = $("task-timeout");
  for (const field of [title, params, timeout]) markInvalid(field, false);
  showFormError(taskFormError, "");

  const problems = [];
  if (!title.value.trim()) {
    problems.push("Title is required.");
    markInvalid(title, true);
  }
  let parsedParams = {};
  if (params.value.trim()) {
    try {
      parsedParams = JSON.parse(params.value);
    } catch {
      parsedParams = null;
    }
    if (parsedParams === null || typeof parsedParams !== "object" || Array.isArray(parsedParams)) {
      problems.push("Params must be a JSON object, like {\"seconds\": 3}.");
      markInvalid(params, true);
    }
  }
  const timeoutValue = timeout.value.trim() === "" ? null : Number(timeout.value);
  if (timeoutValue !== null && (!Number.isInteger(timeoutValue) || timeoutValue < 1 || timeoutValue > config.maxTimeout)) {
    problems.push(`Timeout must be a whole number of seconds from 1 to ${config.maxTimeout}.`);
    markInvalid(timeout, true);
  }
  if (problems.length) {
    showFormError(taskFormError, problems.join(" "));
    taskForm.querySelector("[aria-invalid=true]")?.focus();
    return;
  }

  const body = {
    title: title.value.trim(),
    description: $("task-description").value,
    kind: $("task-kind").value,
    params: parsedParams,
  };
  if (timeoutValue !== null) body.timeout = timeoutValue;
  const submit = $("task-submit");
  submit.disabled = true;
  try {
    const task = await api("POST", "/api/tasks/", body);
    mergeTask(task);
    announce(`Task ${task.title} created.`);
    // Clear only what was sent: whoever typed the next task meanwhile keeps it.
    if (title.value.trim() === body.title) title.value = "";
    if ($("task-description").value === body.description) $("task-description").value = "";
    if (document.activeElement === submit || document.activeElement === document.body) title.focus();
  } catch (error) {
    const fields = error.data && typeof error.data === "object" ? error.data : {};
    for (const [name, node] of [["title", title], ["params", params], ["timeout", timeout]]) {
      if (name in fields) markInvalid(node, true);
    }
    showFormError(taskFormError, error.message);
  } finally {
    submit.disabled = false;
  }
});

// --- Search -------------------------------------------------------------------------------

const searchForm = $("search-form");
const searchInput = $("search-query");
const searchSection = $("search-results");
const searchList = $("search-list");
const searchSummary = $("search-summary");
let searchSeq = 0;
let searchTimer = null;

/** Undo the escaping of Python's html.escape (the search API's), for text we set as text. */
function unescapeHtml(text) {
  return text.replace(/&(#x[0-9a-fA-F]+|#\d+|amp|lt|gt|quot|apos);/g, (_, entity) => {
    if (entity[0] === "#") {
      const code = entity[1] === "x" ? parseInt(entity.slice(2), 16) : parseInt(entity.slice(1), 10);
      return Number.isFinite(code) && code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : "";
    }
    return { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" }[entity];
  });
}

/**
 * A search snippet as DOM. The API sends HTML-escaped text whose only markup is
 * <mark>…</mark> (search/highlight.py). We still never parse it as HTML: split on the mark
 * tags, unescape each piece and add it as text, inside a <mark> element where marked.
 */
function snippetNode(snippet, className = "snippet") {
  const node = el("span", { className });
  if (typeof snippet !== "string") return node;
  let marked = false;
  for (const part of snippet.split(/(<mark>|<\/mark>)/)) {
    if (part === "<mark>") marked = true;
    else if (part === "</mark>") marked = false;
    else if (part) {
      const text = unescapeHtml(part);
      node.append(marked ? el("mark", { text }) : document.createTextNode(text));
    }
  }
  return node;
}

function searchResultItem(hit) {
  const task = hit.task || {};
  const item = el("li", { className: "search-item", attrs: { "data-task-id": task.id } });
  const head = el("div", { className: "search-head" });
  head.append(hit.title_snippet ? snippetNode(hit.title_snippet, "title-text") : el("span", { className: "title-text", text: task.title || "" }));
  if (task.status) {
    head.append(el("span", { className: `badge badge--${task.status}`, text: STATUS_LABELS[task.status] || task.status }));
  }
  item.append(head);
  if (hit.description_snippet) item.append(snippetNode(hit.description_snippet));
  return item;
}

async function runSearch(query) {
  const seq = ++searchSeq;
  if (!query.trim()) {
    clearSearch();
    return;
  }
  searchSection.hidden = false;
  searchSummary.textContent = "Searching…";
  try {
    const data = await api("GET", `/search?query=${encodeURIComponent(query)}`);
    if (seq !== searchSeq) return; // a newer search superseded this one
    const results = Array.isArray(data) ? data : data.results || [];
    searchList.replaceChildren(...results.map(searchResultItem));
    const count = Number.isInteger(data.count) ? data.count : results.length;
    searchSummary.textContent = count === 0 ? `No tasks match “${query}”.` : `${count} ${count === 1 ? "task matches" : "tasks match"} “${query}”.`;
  } catch (error) {
    if (seq !== searchSeq) return;
    searchList.replaceChildren();
    searchSummary.textContent = `Search failed: ${error.message}`;
  }
}

function clearSearch() {
  searchSeq += 1;
  searchSection.hidden = true;
  searchList.replaceChildren();
  searchSummary.textContent = "";
}

searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  runSearch(searchInput.value);
});
searchInput.addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => runSearch(searchInput.value), 300);
});
$("search-clear").addEventListener("click", () => {
  searchInput.value = "";
  clearSearch();
  searchInput.focus();
});

// --- Notifications ------------------------------------------------------------------------

const bell = $("bell");
const bellCount = $("bell-count");
const panel = $("notifications-panel");
const notificationList = $("notification-list");
const notificationsEmpty = $("notifications-empty");
const notifications = new Map(); // id -> notification
let unreadCount = 0;

function showUnread(count) {
  unreadCount = Math.max(0, count);
  bellCount.textContent = unreadCount > 99 ? "99+" : String(unreadCount);
  bellCount.hidden = unreadCount === 0;
  bell.setAttribute("aria-label", `Notifications, ${unreadCount} unread`);
  bell.dataset.unread = String(unreadCount);
}

function notificationItem(notification) {
  const item = el("li", {
    className: notification.read_at ? "notification" : "notification notification--unread",
    attrs: { "data-notification-id": notification.id },
  });
  // A task's notification opens that task's page.
  const title = notification.task_id
    ? el("a", { className: "notification-title", text: notification.title, attrs: { href: `/tasks/${encodeURIComponent(notification.task_id)}/` } })
    : el("span", { className: "notification-title", text: notification.title });
  item.append(title);
  if (notification.body) item.append(el("span", { className: "notification-body", text: shorten(notification.body, 200) }));
  item.append(timeElement(notification.created_at));
  return item;
}

function renderNotifications() {
  const sorted = [...notifications.values()].sort((a, b) => (tsKey(b.created_at) > tsKey(a.created_at) ? 1 : -1));
  notificationList.replaceChildren(...sorted.slice(0, 50).map(notificationItem));
  notificationsEmpty.hidden = notifications.size > 0;
}

async function loadNotifications() {
  try {
    const page = await api("GET", "/api/notifications/?page_size=20");
    for (const notification of page.results || []) notifications.set(notification.id, notification);
    if (Number.isInteger(page.unread_count)) showUnread(page.unread_count);
    renderNotifications();
  } catch (error) {
    notificationsEmpty.textContent = `Could not load notifications: ${error.message}`;
  }
}

function onNotification(frame) {
  const notification = frame.data || {};
  if (notification.id === undefined || notifications.has(notification.id)) return;
  notifications.set(notification.id, notification);
  if (!notification.read_at) showUnread(unreadCount + 1);
  renderNotifications();
  announce(`Notification: ${notification.title}`);
}

function setPanelOpen(open) {
  panel.hidden = !open;
  bell.setAttribute("aria-expanded", String(open));
  if (open) $("notifications-read-all").focus();
}

bell.addEventListener("click", () => setPanelOpen(panel.hidden));
panel.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    setPanelOpen(false);
    bell.focus();
  }
});
document.addEventListener("click", (event) => {
  if (!panel.hidden && !panel.contains(event.target) && !bell.contains(event.target)) setPanelOpen(false);
});
$("notifications-read-all").addEventListener("click", async () => {
  try {
    const data = await api("POST", "/api/notifications/read-all/");
    const now = new Date().toISOString();
    for (const notification of notifications.values()) notification.read_at ||= now;
    showUnread(Number.isInteger(data?.unread_count) ? data.unread_count : 0);
    renderNotifications();
    announce("All notifications marked read.");
  } catch (error) {
    announce(`Could not mark notifications read: ${error.message}`);
  }
});

// --- Chat: taskhub/static/taskhub/chat.js (started below with this page's socket) ---------

function onError(frame) {
  const data = frame.data || {};
  if (data.code === "events_pruned") {
    // Retention dropped events we never saw: the table may be stale. Read it again.
    reloadTasks();
  }
}

// --- Wiring -------------------------------------------------------------------------------

const client = new ProtocolClient();
window.taskhubClient = client; // for debugging and the browser tests
let firstOpen = true;

client.on("state", ({ state, code }) => {
  showConnection(state, code);
  if (state !== "open") return;
  if (firstOpen) {
    // Read the state only once the socket is live: every change after this read arrives
    // as an event, and one that raced with the read is reconciled by updated_at.
    firstOpen = false;
    Promise.allSettled([loadTasks(), loadNotifications()]).then(() => {
      document.body.dataset.ready = "true"; // the first state is on screen
    });
  }
});
client.on("*", (frame) => {
  if (Number.isInteger(frame.id)) document.body.dataset.lastEventId = String(frame.id);
});
client.on("welcome", () => {
  document.body.dataset.lastEventId = String(client.lastEventId ?? 0);
});
client.on("task.updated", onTaskUpdated);
client.on("task.deleted", onTaskDeleted);
client.on("task.progress", onTaskProgress);
client.on("notification.new", onNotification);
// Marked read elsewhere (another tab, the API): every tab's count agrees.
client.on("notification.read", (frame) => {
  const { ids, all, read_at: readAt } = frame.data || {};
  if (all) {
    for (const notification of notifications.values()) notification.read_at ||= readAt;
    showUnread(0);
  } else {
    let newlyRead = 0; // unread here until now (or not loaded here: the server says it was)
    for (const id of ids || []) {
      const notification = notifications.get(id);
      if (notification?.read_at) continue;
      newlyRead += 1;
      if (notification) notification.read_at = readAt;
    }
    showUnread(unreadCount - newlyRead);
  }
  renderNotifications();
});
client.on("error", onError);
client.on("reset", () => reloadTasks());
client.on("fatal", ({ code }) => {
  if (code === 4401) {
    window.location.assign(`${config.loginUrl}?next=${encodeURIComponent(window.location.pathname)}`);
  }
});

showUnread(0);
startChat({ client, config, api, el, timeElement, announce });
client.connect();
