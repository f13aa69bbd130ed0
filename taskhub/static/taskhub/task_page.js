// One task's own page (/tasks/<id>/): its fields, its full result, the timeline of its
// events, live over the socket; cancel, retry and edit-and-re-run.
//
// As on the dashboard, no framework and no build step; the helpers both pages use are
// page.js's, and every user string reaches the DOM through textContent or an attribute
// value, never innerHTML.
//
// State flow: once the socket is live, the task is read over REST (GET /api/tasks/<id>/)
// and its history over GET /api/tasks/<id>/events/ (every page, oldest first); from then
// on the socket's task.updated / task.progress frames of this task keep both current. A
// timeline entry is keyed by its event id, so an event both read over REST and received
// live is shown once; a reconnect resumes the stream where it stopped (protocol-client.js),
// and a "reset" or an events_pruned error reads everything again.

import {
  $,
  STATUS_LABELS,
  announce,
  api,
  config,
  el,
  retryText,
  showConnection,
  signIn,
  timeElement,
  tsKey,
} from "./page.js";
import { ProtocolClient } from "./protocol-client.js";

const TASK_ID = config.taskId;
const TERMINAL = new Set(config.statuses.terminal);
const CANCELLABLE = new Set(config.statuses.cancellable);
const RETRYABLE = new Set(config.statuses.retryable);
const pretty = (value) => JSON.stringify(value, null, 2);

// --- The task -----------------------------------------------------------------------------

let task = null; // the REST shape, kept current by events
let deleted = false;
let busy = false; // a cancel/retry request in flight
let cancelRequested = false;
let lastRetry = null; // the newest event's `retry`, while the task waits for it

function renderTask() {
  if (!task) return;
  document.title = `${task.title} · TaskHub`;
  $("task-heading").textContent = task.title;
  const badge = $("task-status");
  badge.className = `badge badge--${task.status}`;
  badge.dataset.status = task.status;
  badge.textContent = STATUS_LABELS[task.status] || task.status;
  document.body.dataset.taskStatus = task.status;

  $("task-description").textContent = task.description || "";
  $("task-description").hidden = !task.description;
  $("task-kind").textContent = task.kind || "";
  const progress = Math.max(0, Math.min(100, Number(task.progress) || 0));
  $("task-progress").value = progress;
  $("task-percent").textContent = `${progress}%`;
  // "2 of 3" under a retry policy; just the count without one, or past it (manual retries).
  const max = task.max_attempts;
  $("task-attempts").textContent = max > 1 && task.attempts <= max ? `${task.attempts} of ${max}` : String(task.attempts ?? "");
  $("task-created").replaceChildren(timeElement(task.created_at));
  $("task-started").replaceChildren(timeElement(task.started_at));
  $("task-finished").replaceChildren(timeElement(TERMINAL.has(task.status) ? task.finished_at : null));
  $("task-timeout").textContent = task.timeout ? `${task.timeout} s` : "—";

  const note = $("task-retry-note");
  const retrying = task.status === "pending" && lastRetry;
  note.hidden = !retrying;
  note.textContent = retrying ? `${retryText(lastRetry)}${lastRetry.error ? ` after: ${lastRetry.error}` : ""}` : "";

  if (task.params !== undefined) $("task-params").textContent = pretty(task.params);
  renderOutcome();

  const cancel = $("task-cancel");
  cancel.hidden = deleted || !CANCELLABLE.has(task.status);
  cancel.disabled = busy || cancelRequested;
  cancel.textContent = cancelRequested ? "Cancelling…" : "Cancel";
  const canRetry = !deleted && RETRYABLE.has(task.status) && TERMINAL.has(task.status);
  $("task-retry").hidden = !canRetry;
  $("task-retry").disabled = busy;
  $("rerun-form").hidden = !canRetry;
  $("rerun-submit").disabled = busy;
  prefillRerun();
}

function renderOutcome() {
  const card = $("outcome-card");
  const box = $("task-outcome");
  box.replaceChildren();
  if (task.status === "completed" && task.result !== undefined) {
    $("outcome-heading").textContent = "Result";
    const table = task.kind === "wordcount" ? wordcountTable(task.result) : null;
    if (table) {
      box.append(table);
      const raw = el("details", { className: "raw" }, [el("summary", { text: "As JSON" })]);
      raw.append(el("pre", { className: "json", text: pretty(task.result) }));
      box.append(raw);
    } else {
      box.append(el("pre", { className: "json", attrs: { id: "task-result" }, text: pretty(task.result) }));
    }
    card.hidden = false;
  } else if ((task.status === "failed" || task.status === "cancelled") && task.error) {
    $("outcome-heading").textContent = "Error";
    box.append(el("pre", { className: "error-text", attrs: { id: "task-error" }, text: task.error }));
    card.hidden = false;
  } else {
    card.hidden = true;
  }
}

/** A wordcount result ({words, lines, characters, top_words: [[word, n], ...]}) as tables. */
function wordcountTable(result) {
  if (!result || typeof result !== "object" || !Array.isArray(result.top_words)) return null;
  const wrap = el("div", { className: "wordcount" });
  const totals = el("table", { className: "small-table", attrs: { "aria-label": "Counts" } });
  const body = el("tbody");
  for (const key of ["words", "lines", "characters"]) {
    if (result[key] === undefined) continue;
    body.append(el("tr", {}, [el("th", { text: key, attrs: { scope: "row" } }), el("td", { className: "num", text: result[key] })]));
  }
  totals.append(body);
  const top = el("table", { className: "small-table", attrs: { "aria-label": "Most common words" } });
  top.append(el("thead", {}, [el("tr", {}, [el("th", { text: "word", attrs: { scope: "col" } }), el("th", { text: "count", attrs: { scope: "col" } })])]));
  const topBody = el("tbody");
  for (const pair of result.top_words) {
    if (!Array.isArray(pair)) continue;
    topBody.append(el("tr", {}, [el("td", { text: pair[0] }), el("td", { className: "num", text: pair[1] })]));
  }
  top.append(topBody);
  wrap.append(totals, top);
  return wrap;
}

/** Merge a newer state (REST task or task.updated data); an older one is ignored. */
function mergeTask(incoming) {
  if (task && tsKey(incoming.updated_at) < tsKey(task.updated_at)) return false;
  const previous = task?.status;
  task = { ...(task || {}), ...incoming, id: TASK_ID };
  delete task.task_id;
  if (task.status !== "completed") delete task.result;
  if (task.status !== "failed" && task.status !== "cancelled") task.error = "";
  if (previous !== task.status) cancelRequested = false;
  if (previous && previous !== task.status && TERMINAL.has(task.status)) {
    announce(`Task ${STATUS_LABELS[task.status]}.`);
  }
  renderTask();
  return true;
}

// --- Timeline -----------------------------------------------------------------------------

const timeline = $("timeline");
const entries = new Map(); // event id -> {event, item}

function describeEvent(event) {
  const data = event.data || {};
  if (event.type === "task.deleted") return { status: "deleted", text: "deleted by an operator" };
  const status = data.status;
  const parts = [];
  if (data.previous_status === null || data.previous_status === undefined) parts.push("created");
  if (data.retry) parts.push(retryText(data.retry));
  else if (status === "pending" && data.previous_status && TERMINAL.has(data.previous_status)) {
    parts.push(data.params_changed ? `re-run with edited params ${JSON.stringify(data.params)}` : "retry requested");
  }
  if (status === "in_progress") parts.push(`${Math.round(Number(data.progress) || 0)}%`);
  if (status === "completed") parts.push("done");
  return { status, text: parts.join(" · "), error: data.retry?.error || data.error || "" };
}

function timelineItem(event) {
  const data = event.data || {};
  const { status, text, error } = describeEvent(event);
  const item = el("li", { className: `event event--${status}`, attrs: { "data-event-id": event.id, "data-status": status } });
  const head = el("div", { className: "event-head" }, [
    el("span", { className: `badge badge--${status}`, text: STATUS_LABELS[status] || status }),
    timeElement(event.ts || data.updated_at),
  ]);
  if (data.attempts !== undefined) head.append(el("span", { className: "muted", text: `attempt ${data.attempts}` }));
  item.append(head);
  if (text) item.append(el("span", { className: "event-text", text }));
  if (error) item.append(el("span", { className: "error-text event-error", text: error }));
  return item;
}

function addEvent(event) {
  if (!Number.isInteger(event.id) || entries.has(event.id)) return;
  if (event.type !== "task.updated" && event.type !== "task.deleted") return;
  const item = timelineItem(event);
  // Keep id order: a REST page and live frames may interleave around the first read.
  let before = null;
  for (const [id, entry] of entries) {
    if (id > event.id && (before === null || id < before.id)) before = { id, item: entry.item };
  }
  timeline.insertBefore(item, before ? before.item : null);
  entries.set(event.id, { event, item });
}

/** The newest timeline entry shows the progress live while the task runs. */
function showLiveProgress(progress) {
  const newest = Math.max(...entries.keys());
  const entry = entries.get(newest);
  if (!entry || entry.event.data?.status !== "in_progress") return;
  entry.event.data.progress = progress;
  const text = entry.item.querySelector(".event-text");
  if (text) text.textContent = describeEvent(entry.event).text;
}

async function loadTimeline() {
  $("timeline-loading").hidden = false;
  $("timeline-loading").textContent = "Loading the timeline…";
  let url = `/api/tasks/${encodeURIComponent(TASK_ID)}/events/?page_size=100`;
  try {
    while (url) {
      const page = await api("GET", url);
      for (const event of page.results || []) addEvent(event);
      // Follow the API's next link, on this origin only.
      url = page.next ? (({ pathname, search }) => pathname + search)(new URL(page.next, window.location.href)) : null;
    }
    const newest = [...entries.values()].at(-1)?.event;
    lastRetry = newest?.data?.retry || null;
    $("timeline-loading").hidden = true;
  } catch (error) {
    $("timeline-loading").textContent = `Could not load the timeline: ${error.message}`;
  }
}

async function loadTask() {
  try {
    mergeTask(await api("GET", `/api/tasks/${encodeURIComponent(TASK_ID)}/`));
  } catch (error) {
    if (error.status === 404) markDeleted();
    else $("task-action-error").textContent = `Could not load the task: ${error.message}`;
  }
}

async function loadAll() {
  await Promise.allSettled([loadTask(), loadTimeline()]);
  renderTask();
  document.body.dataset.ready = "true";
}

function markDeleted() {
  deleted = true;
  $("task-action-error").textContent = "This task was deleted.";
  renderTask();
}

// --- Live events --------------------------------------------------------------------------

function onTaskUpdated(frame) {
  const data = frame.data || {};
  if (data.task_id !== TASK_ID) return;
  addEvent(frame);
  lastRetry = data.retry || null;
  const previous = task?.status;
  mergeTask({ ...data });
  // Events carry no params, start or finish times: a new attempt (maybe with edited
  // params), a start and an end are read again over REST.
  if (previous !== data.status && (data.status === "in_progress" || TERMINAL.has(data.status) || (data.status === "pending" && previous && TERMINAL.has(previous)))) {
    loadTask();
  }
}

function onTaskProgress(frame) {
  const data = frame.data || {};
  if (data.task_id !== TASK_ID || !task || TERMINAL.has(task.status)) return;
  const progress = Number(data.progress);
  if (!Number.isFinite(progress)) return;
  task.progress = progress;
  if (data.status) task.status = data.status;
  renderTask();
  showLiveProgress(progress);
}

function onTaskDeleted(frame) {
  if (frame.data?.task_id !== TASK_ID) return;
  addEvent(frame);
  markDeleted();
}

// --- Actions ------------------------------------------------------------------------------

async function act(action, body) {
  busy = true;
  renderTask();
  $("task-action-error").textContent = "";
  try {
    const updated = await api("POST", `/api/tasks/${encodeURIComponent(TASK_ID)}/${action}/`, body);
    if (action === "cancel" && updated.status === "in_progress") cancelRequested = true;
    mergeTask(updated);
    // The reply is the newest state even when an event with the same updated_at came first.
    if (updated.params !== undefined) task.params = updated.params;
    announce(action === "cancel" ? "Cancelling the task." : "The task will run again.");
    return true;
  } catch (error) {
    $("task-action-error").textContent = `Could not ${action} the task: ${error.message}`;
    announce(`Could not ${action} the task: ${error.message}`);
    return false;
  } finally {
    busy = false;
    renderTask();
  }
}

$("task-cancel").addEventListener("click", () => act("cancel"));
$("task-retry").addEventListener("click", () => act("retry"));

let rerunPrefilledFor = null; // the text the editor was last prefilled with

/** Prefill the editor with the current params, unless the user has typed in it. */
function prefillRerun() {
  const rerunParams = $("rerun-params");
  if (!task || task.params === undefined) return;
  const text = pretty(task.params);
  if (rerunPrefilledFor === null || rerunParams.value === rerunPrefilledFor) {
    rerunParams.value = text;
    rerunPrefilledFor = text;
  }
  $("rerun-params-help").textContent = config.kindForms?.[task.kind]?.help || "";
}

$("rerun-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("rerun-error");
  const rerunParams = $("rerun-params");
  error.textContent = "";
  rerunParams.removeAttribute("aria-invalid");
  let params = null;
  try {
    params = JSON.parse(rerunParams.value || "{}");
  } catch {
    params = null;
  }
  if (params === null || typeof params !== "object" || Array.isArray(params)) {
    error.textContent = 'Params must be a JSON object, like {"seconds": 3}.';
    rerunParams.setAttribute("aria-invalid", "true");
    rerunParams.focus();
    return;
  }
  if (await act("retry", { params })) {
    rerunPrefilledFor = null;
    prefillRerun();
  }
});

// --- Wiring -------------------------------------------------------------------------------

const client = new ProtocolClient();
window.taskhubClient = client; // for debugging and the browser tests
let firstOpen = true;

client.on("state", ({ state, code }) => {
  showConnection(state, code);
  if (state === "open" && firstOpen) {
    // Read only once the socket is live: every later change arrives as an event.
    firstOpen = false;
    loadAll();
  }
});
client.on("task.updated", onTaskUpdated);
client.on("task.progress", onTaskProgress);
client.on("task.deleted", onTaskDeleted);
client.on("error", (frame) => {
  if (frame.data?.code === "events_pruned") loadAll();
});
client.on("reset", () => loadAll());
client.on("fatal", ({ code }) => {
  if (code === 4401) signIn();
});
client.connect();
