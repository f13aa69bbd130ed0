// The operators' view (/admin/operations/, taskhub/ops.py): polls data.json and redraws.
//
// Polling, not the WebSocket: see taskhub/ops.py's docstring. One request at a time: the
// next poll is scheduled when the previous one has ended, so a slow server is never
// asked twice at once. Every user-supplied string (titles, names) goes in as textContent.
"use strict";

(function () {
  const root = document.getElementById("operations");
  const bootstrap = JSON.parse(document.getElementById("operations-bootstrap").textContent);
  const csrfToken = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  const $ = (id) => document.getElementById(id);
  const charts = {};
  window.opsCharts = charts; // for the browser tests and anyone at the console

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    if (value < 120) return `${value.toFixed(1)} s`;
    return `${(value / 60).toFixed(1)} min`;
  }

  function say(text, isError) {
    const box = $("ops-message");
    box.textContent = text;
    box.classList.toggle("ops-error", Boolean(isError));
    box.hidden = !text;
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken, "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(body || {}),
      credentials: "same-origin",
    });
    let data = {};
    try {
      data = await response.json();
    } catch (error) {
      data = { detail: `HTTP ${response.status}` };
    }
    return { ok: response.ok, data };
  }

  async function taskAction(taskId, action, label) {
    const { ok, data } = await post(`${root.dataset.taskUrl}${taskId}/${action}`);
    say(ok ? `${label}: ${data.detail}` : `${label} refused: ${data.detail}`, !ok);
    poll(true);
  }

  async function drain(worker) {
    const { ok, data } = await post(root.dataset.drainUrl, { worker });
    say(
      ok
        ? `${worker} drained: it consumes none of ${data.queues.join(", ") || "its queues"} ` +
            "now and finishes what it runs."
        : `Drain refused: ${data.detail}`,
      !ok,
    );
    poll(true);
  }

  function taskLink(run) {
    const href = `${root.dataset.taskAdminUrl}${run.task_id}/change/`;
    return el("a", { href }, run.title || run.task_id);
  }

  function renderWorkers(workers) {
    const body = $("workers-body");
    body.replaceChildren();
    $("workers-count").textContent = workers === null ? "" : `(${workers.length})`;
    if (workers === null) return;
    if (workers.length === 0) {
      body.append(el("tr", {}, el("td", { colSpan: 8 }, "No worker answers.")));
    }
    for (const worker of workers) {
      const active = el("ul", { class: "ops-active" });
      for (const run of worker.active) {
        active.append(
          el(
            "li",
            { "data-task-id": run.task_id || "" },
            taskLink(run),
            ` (${run.kind || "?"}, ${run.owner || "no owner"}, attempt ${run.attempt ?? "?"}) `,
            el("button", {
              type: "button",
              class: "button ops-cancel",
              textContent: "Cancel",
              ariaLabel: `Cancel task ${run.title || run.task_id}`,
              onclick: () => taskAction(run.task_id, "cancel", "Cancel"),
            }),
          ),
        );
      }
      const drained = Array.isArray(worker.queues) && worker.queues.length === 0;
      const queues = worker.queues === null ? "?" : drained ? "none (drained)" : worker.queues.join(", ");
      body.append(
        el(
          "tr",
          { "data-worker": worker.name },
          el("th", { scope: "row" }, worker.name),
          el("td", { class: "ops-pid" }, worker.pid ?? "?"),
          el("td", { class: "ops-concurrency" }, worker.concurrency ?? "?"),
          el("td", { class: "ops-queues" }, queues),
          el("td", {}, `${(worker.heartbeat_age ?? 0).toFixed(1)} s`),
          el(
            "td",
            { class: "ops-processed" },
            String(worker.processed),
            el(
              "div",
              { class: "ops-last-hour", title: "Attempts it ended in the last hour (PostgreSQL: kept across restarts)" },
              `last hour: ${worker.last_hour.completed || 0} completed, ` +
                `${worker.last_hour.failed || 0} failed, ${worker.last_hour.cancelled || 0} cancelled`,
            ),
          ),
          el("td", {}, worker.active.length ? active : "idle"),
          el(
            "td",
            {},
            el("button", {
              type: "button",
              class: "button ops-drain",
              textContent: "Drain",
              disabled: drained,
              ariaLabel: `Drain worker ${worker.name}`,
              title: "Stop taking new tasks; running ones finish",
              onclick: () => drain(worker.name),
            }),
          ),
        ),
      );
    }
  }

  function rows(bodyId, entries) {
    $(bodyId).replaceChildren(
      ...entries.map((cells) => el("tr", {}, el("th", { scope: "row" }, cells[0]), ...cells.slice(1).map((c) => el("td", {}, c)))),
    );
  }

  function renderFigures(data) {
    if (data.queues) rows("queues-body", Object.entries(data.queues));
    if (data.by_status) {
      const statusRows = Object.entries(data.by_status).map(([status, count]) => {
        const link = el("a", { href: `${root.dataset.taskAdminUrl}?status__exact=${status}` }, status.replace("_", " "));
        return [link, count];
      });
      rows("status-body", statusRows);
    }
    if (data.dispatcher_lag_seconds !== undefined) $("dispatcher-lag").textContent = seconds(data.dispatcher_lag_seconds);
    if (data.rates) {
      rows("rates-body", [
        ["started", data.rates.started_15m, data.rates.started_1h],
        ["finished", data.rates.finished_15m, data.rates.finished_1h],
      ]);
    }
    if (data.processing_by_kind) {
      rows(
        "kinds-body",
        data.processing_by_kind.length
          ? data.processing_by_kind.map((k) => [k.kind, k.count, seconds(k.p50), seconds(k.p95)])
          : [["none finished", "", "", ""]],
      );
    }
  }

  function renderUnsuccessful(tasks) {
    if (!tasks) return;
    const body = $("unsuccessful-body");
    body.replaceChildren();
    if (tasks.length === 0) body.append(el("tr", {}, el("td", { colSpan: 6 }, "None.")));
    for (const task of tasks) {
      body.append(
        el(
          "tr",
          { "data-task-id": task.task_id },
          el("th", { scope: "row" }, taskLink(task)),
          el("td", {}, task.owner || "no owner"),
          el("td", {}, task.kind),
          el("td", {}, task.status),
          el("td", { class: "ops-why" }, task.error),
          el(
            "td",
            {},
            el("button", {
              type: "button",
              class: "button ops-retry",
              textContent: "Retry",
              ariaLabel: `Retry task ${task.title}`,
              onclick: () => taskAction(task.task_id, "retry", "Retry"),
            }),
          ),
        ),
      );
    }
  }

  function chart(id, series, data) {
    const target = $(id);
    const width = Math.max(320, target.clientWidth || 480);
    if (!charts[id]) {
      charts[id] = new uPlot(
        {
          width,
          height: 220,
          series: [{}, ...series],
          scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
          axes: [{}, { size: 50 }],
        },
        data,
        target,
      );
    } else {
      charts[id].setData(data);
    }
  }

  function renderCharts(activity) {
    if (!activity) return;
    chart(
      "throughput-chart",
      [
        { label: "started", stroke: "#447e9b", width: 2 },
        { label: "finished", stroke: "#2e8540", width: 2 },
      ],
      [activity.t, activity.started, activity.finished],
    );
    const total = activity.started.concat(activity.finished).reduce((a, b) => a + b, 0);
    $("throughput-chart").dataset.total = String(total);
    chart(
      "latency-chart",
      [
        // Points too: a minute with runs between two without is a lone point, no line.
        { label: "p50 s", stroke: "#447e9b", width: 2, points: { show: true, size: 6 } },
        { label: "p95 s", stroke: "#ba2121", width: 2, points: { show: true, size: 6 } },
      ],
      [activity.t, activity.p50, activity.p95],
    );
  }

  function renderErrors(errors) {
    const box = $("ops-errors");
    const messages = Object.values(errors || {});
    box.textContent = messages.join(" · ");
    box.hidden = messages.length === 0;
  }

  let timer = null;
  let inFlight = false;

  async function poll(now) {
    if (inFlight) return;
    clearTimeout(timer);
    inFlight = true;
    try {
      const response = await fetch(root.dataset.dataUrl, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      const type = response.headers.get("Content-Type") || "";
      if (response.redirected || !type.includes("application/json")) {
        // The admin session ended: its login page came back instead of data.
        $("ops-live").textContent = "Signed out: reload to sign in again";
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      renderWorkers(data.workers);
      renderFigures(data);
      renderUnsuccessful(data.recently_unsuccessful);
      renderCharts(data.activity);
      renderErrors(data.errors);
      $("ops-live").textContent = "Live";
      $("ops-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      root.dataset.ready = "true";
    } catch (error) {
      $("ops-live").textContent = "Server not reachable, retrying…";
    } finally {
      inFlight = false;
    }
    timer = setTimeout(poll, bootstrap.poll_interval_ms);
  }

  window.addEventListener("resize", () => {
    for (const [id, plot] of Object.entries(charts)) {
      plot.setSize({ width: Math.max(320, $(id).clientWidth), height: 220 });
    }
  });

  poll();
})();
