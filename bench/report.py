"""The stdout table: one line per figure, p50 and p95 side by side."""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str, str, str]


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    return str(value)


def _dist(label: str, stats: dict[str, Any] | None, unit: str) -> Row:
    stats = stats or {}
    return (
        label,
        _num(stats.get("n")),
        _num(stats.get("p50")),
        _num(stats.get("p95")),
        _num(stats.get("mean")),
        unit,
    )


def _one(label: str, value: Any, unit: str, n: Any = None) -> Row:
    return (label, _num(n), _num(value), "", "", unit)


def _ratio(label: str, p50: Any, p95: Any) -> Row:
    def x(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}x"

    return (label, "", x(p50), x(p95), "", "ratio")


def _section(results: dict[str, Any], key: str) -> tuple[dict[str, Any], list[Row]]:
    part = results.get(key)
    if part is None:
        return {}, [(f"  (not run: {results.get('error', 'no result')})", "", "", "", "", "")]
    if "error" in part and len(part) == 1:
        return {}, [(f"  FAILED: {part['error'][:150]}", "", "", "", "", "")]
    extra = [(f"  note: {part['error'][:150]}", "", "", "", "", "")] if "error" in part else []
    return part, extra


def rows(results: dict[str, Any]) -> list[Row | str]:
    out: list[Row | str] = []

    out.append("1. Start latency: create -> in_progress, one echo task, idle system")
    part, extra = _section(results, "start_latency")
    if part:
        out.append(_dist("  REST create (dispatcher nudged)", part["nudge"], "ms"))
        out.append(_dist("  bare row (beat tick only)", part["tick_only"], "ms"))
        out.append(
            _ratio(
                "  tick only / nudged",
                part["ratio_tick_over_nudge_p50"],
                part["ratio_tick_over_nudge_p95"],
            )
        )
        out.append(
            _dist("  of which created -> queued, nudged", part["nudge_created_to_queued"], "ms")
        )
        out.append(
            _dist(
                "  of which created -> queued, tick only", part["tick_only_created_to_queued"], "ms"
            )
        )
    out.extend(extra)

    out.append("2. Throughput: echo tasks created over REST by one client")
    part, extra = _section(results, "throughput")
    if part:
        out.append(_dist("  create request", part["create_request_ms"], "ms"))
        out.append(_one("  create rate", part["create_rate_per_s"], "req/s", part["tasks"]))
        out.append(_one("  end to end (1st POST -> last done)", part.get("tasks_per_s"), "tasks/s"))
        out.append(_one("  end to end time", part.get("end_to_end_seconds"), "s"))
        out.append(
            _dist("  each task: created -> finished", part["task_create_to_finish_ms"], "ms")
        )
        out.append(
            _one("  dispatcher runs that queued any", part["dispatcher_runs_that_queued_some"], "")
        )
        out.append(_one("  tasks queued per such run", part["tasks_queued_per_such_run"], ""))
    out.extend(extra)

    out.append("3. Event delivery: POST returned -> task.updated frame on an open socket")
    part, extra = _section(results, "event_latency")
    if part:
        out.append(_dist("  'pending' frame", part["pending_after_response"], "ms"))
        out.append(_dist("  'completed' frame", part["completed_after_response"], "ms"))
        out.append(_dist("  'pending' frame, from POST sent", part["pending_after_request"], "ms"))
        out.append(
            _dist("  'completed' frame, from POST sent", part["completed_after_request"], "ms")
        )
        out.append(
            _one(
                "  'pending' frames that beat the response",
                part["pending_frame_before_response"],
                "of n",
            )
        )
    out.extend(extra)

    out.append("4. Resume: reconnect with ?last_event_id= after missing N events")
    part, extra = _section(results, "resume")
    if part:
        out.append(_one("  missed events", part["events"], "events"))
        out.append(_dist("  connect -> last missed frame", part["replay_ms"], "ms"))
        out.append(_dist("  connect -> first missed frame", part["first_missed_frame_ms"], "ms"))
        out.append(_one("  replay rate (at p50)", part["frames_per_s_p50"], "frames/s"))
        out.append(_one("  in order, none twice", part["in_order_no_duplicates"], ""))
        out.append(_one("  publishing them (notify())", part["publish_rate_per_s"], "events/s"))
    out.extend(extra)

    out.append("5. Fan-out: one event per user, every socket of that user gets it")
    part, extra = _section(results, "fanout")
    if part:
        out.append(_one("  sockets / users", f"{part['sockets']} / {part['users']}", ""))
        out.append(_one("  open all sockets", part["open_all_seconds"], "s"))
        out.append(_dist("  connect -> welcome (per socket)", part["connect_ms"], "ms"))
        out.append(
            _dist("  1st publish -> every socket has it", part["all_sockets_have_event_ms"], "ms")
        )
        out.append(
            _dist("  of which publishing all (1 thread)", part["producer_publish_all_ms"], "ms")
        )
        out.append(
            _dist("  its publish -> socket has it", part["per_socket_after_its_publish_ms"], "ms")
        )
    out.extend(extra)

    out.append("6. Memory: Daphne RSS (median of 5 samples)")
    part, extra = _section(results, "memory")
    if part:
        out.append(_one("  idle", part["rss_idle_mib"], "MiB"))
        out.append(_one("  with the fan-out sockets open", part["rss_open_mib"], "MiB"))
        out.append(_one("  after they closed", part["rss_after_close_mib"], "MiB"))
        out.append(_one("  per connection", part["per_connection_kib"], "KiB"))
    elif "fanout_memory" in results:
        out.append(f"  FAILED: {results['fanout_memory'].get('error', '')[:150]}")
    out.extend(extra)
    return out


def render(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    load = machine.get("loadavg_1m_before_after", ["?", "?"])
    lines = [
        f"TaskHub bench {results.get('started_at', '')[:19]}Z  "
        f"nproc={machine.get('nproc')} python={machine.get('python')} "
        f"postgresql={machine.get('postgresql')} redis={machine.get('redis')} "
        f"load(1m)={load[0]}->{load[1]}  {results.get('duration_seconds', '?')} s",
        "Medians and p95 of repeated samples; compare ratios within one run (shared machine).",
        "",
    ]
    header: Row = ("figure", "n", "p50/value", "p95", "mean", "unit")
    table = rows(results)
    widths = (44, 5, 10, 9, 9, 8)
    fmt = "{{:<{}}} {{:>{}}} {{:>{}}} {{:>{}}} {{:>{}}}  {{:<{}}}".format(*widths)
    lines.append(fmt.format(*header))
    lines.append("-" * (sum(widths) + 6))
    for row in table:
        lines.append(row if isinstance(row, str) else fmt.format(*row).rstrip())
    if "error" in results:
        lines.append(f"\nrun error: {results['error']}")
    return "\n".join(lines)
