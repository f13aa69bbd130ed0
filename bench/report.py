"""The stdout table: one line per figure, p50 and p95 side by side."""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str, str, str]
# bench/runner.py's SCENARIOS: without any of them (--scale, --scale-out) there is no table.
SMALL_SCENARIOS = ("start_latency", "throughput", "event_latency", "resume", "fanout_memory")


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
    only = (results.get("params") or {}).get("only")
    table = rows(results) if not only or set(only) & set(SMALL_SCENARIOS) else []
    widths = (44, 5, 10, 9, 9, 8)
    fmt = "{{:<{}}} {{:>{}}} {{:>{}}} {{:>{}}} {{:>{}}}  {{:<{}}}".format(*widths)
    if table:
        lines.append(fmt.format(*header))
        lines.append("-" * (sum(widths) + 6))
    for row in table:
        lines.append(row if isinstance(row, str) else fmt.format(*row).rstrip())
    if "scale" in results:
        lines.append(
            render_scale(results["scale"], results.get("sizes", {}), results.get("stack_env", {}))
        )
    if "scale_out" in results:
        lines.append(render_scale_out(results["scale_out"]))
    if "error" in results:
        lines.append(f"\nrun error: {results['error']}")
    return "\n".join(lines)


# --- The scale parts: the project beside its reference -------------------------------------

Compare = tuple[str, Any, Any, str]  # figure, project, reference, unit


def _get(part: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(part, dict):
            return None
        part = part.get(key)
    return part


def _x(project: Any, reference: Any) -> str:
    """project / reference, the way every ratio in the scale table reads."""
    if not isinstance(project, int | float) or not isinstance(reference, int | float):
        return "-"
    if reference == 0:
        return "-" if project else "1.0x"
    return f"{project / reference:.2f}x"


def _pg_rows(label: str, project: Any, reference: Any, unit: str) -> list[Compare]:
    """PostgreSQL's CPU per unit of work: the bench database's backends, then the whole
    server (bench/measure.py, PostgresCpu, says why both)."""
    key = f"cpu_ms_per_{unit}"
    noun = {"req": "request"}.get(unit, unit)
    return [
        (
            f"{label}PG CPU per {noun}, bench db",
            _get(project, f"postgres_db_{key}"),
            _get(reference, f"postgres_db_{key}"),
            "ms",
        ),
        (
            f"{label}PG CPU per {noun}, whole PG",
            _get(project, f"postgres_{key}"),
            _get(reference, f"postgres_{key}"),
            "ms",
        ),
    ]


def _errors(counts: Any) -> Any:
    if not counts:
        return 0
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def _socket_rows(part: dict[str, Any]) -> list[Compare]:
    out: list[Compare] = []
    project, reference = part.get("project", {}), part.get("reference", {})
    for size in project:
        p, r = project.get(size, {}), reference.get(size, {})
        out += [
            (f"{size} sockets: connected", p.get("connected"), r.get("connected"), "sockets"),
            (f"{size}: connect rate", p.get("connects_per_s"), r.get("connects_per_s"), "/s"),
            (
                f"{size}: connect -> welcome p50",
                _get(p, "connect_ms", "p50"),
                _get(r, "connect_ms", "p50"),
                "ms",
            ),
            (
                f"{size}: connect -> welcome p99",
                p.get("connect_p99_ms"),
                r.get("connect_p99_ms"),
                "ms",
            ),
            (f"{size}: errors", _errors(p.get("errors")), _errors(r.get("errors")), ""),
            (
                f"{size}: server RSS per socket",
                p.get("kib_per_socket"),
                r.get("kib_per_socket"),
                "KiB",
            ),
            (
                f"{size}: server CPU per connect",
                p.get("server_cpu_ms_per_connect"),
                r.get("server_cpu_ms_per_connect"),
                "ms",
            ),
            *_pg_rows(f"{size}: ", p, r, "connect"),
            (
                f"{size}: server CPU, idle, all open",
                p.get("idle_cpu_percent"),
                r.get("idle_cpu_percent"),
                "%",
            ),
            (
                f"{size}: still open after 3 s idle",
                p.get("still_open_after_idle"),
                r.get("still_open_after_idle"),
                "sockets",
            ),
        ]
    return out


def _publish_rows(p: Any, r: Any, key: str, title: str) -> list[tuple[str, Any, Any, str]]:
    """One publisher's rows (`key` in the project's result) beside the reference's."""
    rows = []
    for label in _get(p, key) or {}:
        for figure, name, unit in (
            ("events_per_s", f"{title}, {label}", "/s"),
            ("cpu_ms_per_event", f"{title}, {label}: CPU per event", "ms"),
            ("lost", f"{title}, {label}: lost", ""),
        ):
            rows.append(
                (name, _get(p, key, label, figure), _get(r, "publish_rate", label, figure), unit)
            )
    return rows


def _stalls(result: Any, *path: str) -> str | None:
    """'stalled of windows' (bench/realtime.py, stall_figures), or None before there was one."""
    stalls = _get(result, *path, "stalls")
    if not stalls or not stalls.get("windows"):
        return None
    return f"{stalls['stalled_windows']} of {stalls['windows']}"


def _realtime_rows(part: dict[str, Any]) -> list[Compare]:
    p, r = part.get("project", {}), part.get("reference", {})
    d = ("delivery",)
    out: list[Compare] = [
        ("sockets connected", p.get("sockets_connected"), r.get("sockets_connected"), ""),
        ("delivery: events/s asked", _get(p, *d, "asked_rate"), _get(r, *d, "asked_rate"), "/s"),
        (
            "delivery: events/s published",
            _get(p, *d, "published_per_s"),
            _get(r, *d, "published_per_s"),
            "/s",
        ),
        ("delivery: lost", _get(p, *d, "lost"), _get(r, *d, "lost"), "events"),
        (
            "delivery: frames not from this run",
            _get(p, *d, "foreign_frames"),
            _get(r, *d, "foreign_frames"),
            "frames",
        ),
        (
            "delivery: twice / out of order",
            f"{_get(p, *d, 'duplicates')} / {_get(p, *d, 'out_of_order')}",
            f"{_get(r, *d, 'duplicates')} / {_get(r, *d, 'out_of_order')}",
            "",
        ),
    ]
    for q in ("p50", "p95", "p99", "max"):
        out.append(
            (
                f"delivery: latency {q}",
                _get(p, *d, "latency_ms", q),
                _get(r, *d, "latency_ms", q),
                "ms",
            )
        )
    out += [
        (
            "delivery: stalled 250 ms windows (> 50 ms)",
            _stalls(p, *d),
            _stalls(r, *d),
            "",
        ),
        (
            "delivery: delivered within 5 s",
            _get(p, *d, "latency_ms", "within_5s"),
            _get(r, *d, "latency_ms", "within_5s"),
            "share",
        ),
        (
            "delivery: server CPU per event",
            _get(p, *d, "server_cpu_ms_per_event"),
            _get(r, *d, "server_cpu_ms_per_event"),
            "ms",
        ),
        (
            "delivery: Redis CPU per event",
            _get(p, *d, "redis_cpu_ms_per_event"),
            _get(r, *d, "redis_cpu_ms_per_event"),
            "ms",
        ),
        *_pg_rows("delivery: ", _get(p, *d), _get(r, *d), "event"),
        (
            "delivery: publisher CPU per event",
            _get(p, *d, "publisher_cpu_ms_per_event"),
            _get(r, *d, "publisher_cpu_ms_per_event"),
            "ms",
        ),
        (
            "delivery: client processes' CPU",
            _get(p, *d, "client_cpu_percent"),
            _get(r, *d, "client_cpu_percent"),
            "%",
        ),
    ]
    out += _publish_rows(p, r, "publish_rate", "publish, 1 process")
    # The prototype of the design that passes: the same rows and frames without Django's
    # database layer (bench/publishers.py `_lean_publisher`), beside the same reference.
    out += _publish_rows(p, r, "publish_rate_lean", "publish, lean prototype")
    s = ("storm",)
    out += [
        (
            "storm: dropped / back",
            f"{_get(p, *s, 'dropped')} / {_get(p, *s, 'back')}",
            f"{_get(r, *s, 'dropped')} / {_get(r, *s, 'back')}",
            "",
        ),
        ("storm: all back after", _get(p, *s, "all_back_s"), _get(r, *s, "all_back_s"), "s"),
        (
            "storm: all caught up after",
            _get(p, *s, "all_caught_up_s"),
            _get(r, *s, "all_caught_up_s"),
            "s",
        ),
        (
            "storm: lost / twice",
            f"{_get(p, *s, 'lost')} / {_get(p, *s, 'duplicates')}",
            f"{_get(r, *s, 'lost')} / {_get(r, *s, 'duplicates')}",
            "",
        ),
        (
            "storm: reconnect errors",
            _errors(_get(p, *s, "reconnect_errors")),
            _errors(_get(r, *s, "reconnect_errors")),
            "",
        ),
        (
            "storm: latency p99 while it lasts",
            _get(p, *s, "latency_ms", "p99"),
            _get(r, *s, "latency_ms", "p99"),
            "ms",
        ),
    ]
    return out


def _rest_rows(part: dict[str, Any]) -> list[Compare]:
    ref = part.get("reference", {})
    out: list[Compare] = []
    for name, label in (
        ("api", "POST /api/tasks/"),
        ("legacy", "POST /task/create"),
        ("prototype", "lean HTTP prototype"),  # bench/proto_http.py, with --proto
        ("tier", "asyncio HTTP tier prototype"),  # bench/proto_http_tier.py, with --proto
    ):
        if name in ("prototype", "tier") and name not in part:
            continue
        mine = part.get(name, {})
        if "error" in mine and "req_per_s" not in mine:  # a prototype that failed
            out.append((label, f"FAILED: {mine['error']}"[:40], None, ""))
            continue
        out += [
            (f"{label}: req/s", mine.get("req_per_s"), ref.get("req_per_s"), "/s"),
            (f"{label}: p50", mine.get("p50_ms"), ref.get("p50_ms"), "ms"),
            (f"{label}: p99", mine.get("p99_ms"), ref.get("p99_ms"), "ms"),
            (
                f"{label}: server CPU per request",
                mine.get("server_cpu_ms_per_req"),
                ref.get("server_cpu_ms_per_req"),
                "ms",
            ),
            *_pg_rows(f"{label}: ", mine, ref, "req"),
            (
                f"{label}: non-2xx / socket errors",
                f"{mine.get('non_2xx')} / {mine.get('socket_errors') or 0}",
                f"{ref.get('non_2xx')} / {ref.get('socket_errors') or 0}",
                "",
            ),
        ]
    return out


def _drain_rows(part: dict[str, Any]) -> list[Compare]:
    p, r = part.get("project", {}), part.get("reference", {})
    out = _drain_side(p, r, "")
    if "prototype" in part:  # bench/proto_drain.py, with --proto
        out += _drain_side(part["prototype"], r, "batched runs prototype: ")
    return out


def _drain_side(p: dict[str, Any], r: dict[str, Any], label: str) -> list[Compare]:
    if "error" in p and "finished" not in p:
        return [(f"{label}drain", f"FAILED: {p['error']}"[:40], None, "")]
    return [
        (f"{label}tasks drained", p.get("finished"), r.get("finished"), ""),
        (f"{label}drain rate", p.get("tasks_per_s"), r.get("tasks_per_s"), "tasks/s"),
        (
            f"{label}worker CPU per task",
            p.get("worker_cpu_ms_per_task"),
            r.get("worker_cpu_ms_per_task"),
            "ms",
        ),
        (
            f"{label}Redis CPU per task",
            p.get("redis_cpu_ms_per_task"),
            r.get("redis_cpu_ms_per_task"),
            "ms",
        ),
        *_pg_rows(label, p, r, "task"),
    ]


def _search_rows(part: dict[str, Any]) -> list[Compare]:
    """Reference = the selector's SQL alone (EXPLAIN ANALYZE), beside GET /search."""
    out: list[Compare] = []
    for name, c in (part.get("classes") or {}).items():
        gin = "GIN" if c.get("gin_index") else "no GIN"
        out += [
            (
                f"{name} {c.get('query')!r} ({c.get('hits')} hits, {gin}): p50",
                c.get("p50_ms"),
                c.get("sql_ms"),
                "ms",
            ),
            (f"{name}: p99", c.get("p99_ms"), None, "ms"),
            (f"{name}: server CPU per search", c.get("server_cpu_ms_per_search"), None, "ms"),
            *_pg_rows(f"{name}: ", c, None, "search"),
        ]
    for key, label in (
        ("prototype", "lean HTTP prototype"),  # bench/proto_http.py, with --proto
        ("tier", "asyncio HTTP tier prototype"),  # bench/proto_http_tier.py, with --proto
    ):
        for name, c in (part.get(key) or {}).items():
            if not isinstance(c, dict):  # {"error": ...}
                out.append((label, f"FAILED: {c}"[:40], None, ""))
                break
            out += [
                (f"{name}: {label} p50", c.get("p50_ms"), None, "ms"),
                (f"{name}: {label} p99", c.get("p99_ms"), None, "ms"),
                (f"{name}: {label} server CPU", c.get("server_cpu_ms_per_search"), None, "ms"),
            ]
    out.append(
        (
            "ILIKE on an absent word (whole table) / search p50",
            part.get("ilike_absent_ms"),
            _get(part, "classes", "absent", "p50_ms"),
            "ms",
        )
    )
    return out


SCALE_SECTIONS = (
    ("sockets", "Sockets: open N at once; reference = bench/ref_ws.py", _socket_rows),
    (
        "realtime",
        "Delivery, publish rate, reconnect storm; reference = ref_ws + Redis pub/sub",
        _realtime_rows,
    ),
    (
        "rest",
        "REST create, wrk -c32; reference = a minimal Django view (bench/ref_django.py)",
        _rest_rows,
    ),
    (
        "drain",
        "Drain a burst of echo tasks; reference = a bare Celery task, same broker",
        _drain_rows,
    ),
    (
        "search",
        "Search; reference column = the same query's SQL alone (EXPLAIN ANALYZE)",
        _search_rows,
    ),
)


def _prototype_values(build: Any, section: dict[str, Any]) -> dict[str, Any] | None:
    """The lean socket tier prototype's figure for each row label (its side of the
    section read by the same row builder, in the project's place), or None if not run."""
    proto = section.get("prototype")
    if not isinstance(proto, dict):
        return None
    if "error" in proto and len(proto) == 1:
        return {}
    rows = build({"project": proto, "reference": section.get("reference", {})})
    return {label: value for label, value, _reference, _unit in rows}


def render_scale(part: dict[str, Any], sizes: dict[str, Any], stack_env: dict[str, str]) -> str:
    with_proto = any(
        isinstance(_get(part, key, "prototype"), dict) for key in ("sockets", "realtime")
    )
    if with_proto:
        return _render_scale_with_prototype(part, stack_env)
    widths = (52, 16, 16, 9, 7)
    fmt = "{{:<{}}} {{:>{}}} {{:>{}}} {{:>{}}}  {{:<{}}}".format(*widths)
    lines = [
        "",
        "Project beside reference (ratio = project / reference; for rates < 1 is slower, "
        "for times and CPU > 1 is costlier)",
        "stack env: " + " ".join(f"{k}={v}" for k, v in stack_env.items()),
        fmt.format("figure", "project", "reference", "ratio", "unit"),
        "-" * (sum(widths) + 5),
    ]
    for key, title, build in SCALE_SECTIONS:
        if key not in part:
            continue
        lines.append(f"{title} ({_get(part, 'seconds', key)} s)")
        section = part[key]
        if "error" in section and len(section) == 1:
            lines.append(f"  FAILED: {section['error'][:200]}")
            continue
        for side in ("project", "reference"):
            if isinstance(section.get(side), dict) and "error" in section[side]:
                lines.append(f"  {side}: {section[side]['error'][:200]}")
        for label, project, reference, unit in build(section):
            lines.append(
                fmt.format(
                    "  " + label[:50], _num(project), _num(reference), _x(project, reference), unit
                ).rstrip()
            )
    return "\n".join(lines)


def _render_scale_with_prototype(part: dict[str, Any], stack_env: dict[str, str]) -> str:
    """The scale table with the lean socket tier prototype (bench/proto_socket_tier.py)
    between the project and the reference, and its own ratio to the reference."""
    widths = (52, 14, 14, 14, 8, 8, 7)
    fmt = "{{:<{}}} {{:>{}}} {{:>{}}} {{:>{}}} {{:>{}}} {{:>{}}}  {{:<{}}}".format(*widths)
    lines = [
        "",
        "TaskHub / lean socket tier prototype / reference (ratios = each / reference; for "
        "rates < 1 is slower, for times and CPU > 1 is costlier)",
        "stack env: " + " ".join(f"{k}={v}" for k, v in stack_env.items()),
        fmt.format("figure", "TaskHub", "prototype", "reference", "TH/ref", "pr/ref", "unit"),
        "-" * (sum(widths) + 7),
    ]
    for key, title, build in SCALE_SECTIONS:
        if key not in part:
            continue
        lines.append(f"{title} ({_get(part, 'seconds', key)} s)")
        section = part[key]
        if "error" in section and len(section) == 1:
            lines.append(f"  FAILED: {section['error'][:200]}")
            continue
        for side in ("project", "prototype", "reference"):
            if isinstance(section.get(side), dict) and "error" in section[side]:
                lines.append(f"  {side}: {section[side]['error'][:200]}")
        proto = _prototype_values(build, section) if key in ("sockets", "realtime") else None
        for label, project, reference, unit in build(section):
            mine = None if proto is None else proto.get(label)
            lines.append(
                fmt.format(
                    "  " + label[:50],
                    _num(project),
                    "" if proto is None else _num(mine),
                    _num(reference),
                    _x(project, reference),
                    "" if proto is None else _x(mine, reference),
                    unit,
                ).rstrip()
            )
    return "\n".join(lines)


# --- Scale-out: 1 web instance beside 2 behind nginx -------------------------------------


def _scale_out_rows(part: dict[str, Any]) -> list[Compare]:
    """(figure, 1 instance, 2 instances, unit); the factor is 2 / 1."""
    one, two = part.get("1", {}), part.get("2", {})
    d, w = ("delivery",), ("rest",)

    def both(label: str, *path: str, unit: str) -> Compare:
        return (label, _get(one, *path), _get(two, *path), unit)

    bound = _get(part, "sizes", "latency_bound_ms")
    return [
        both("processes in front", "processes", unit=""),
        both("delivery: sockets connected", *d, "sockets_connected", unit=""),
        both("delivery: sockets per user", *d, "sockets_per_user", unit=""),
        both("delivery: connections on each instance", *d, "connections_per_instance", unit=""),
        both("delivery: events/s asked", *d, "asked_rate", unit="/s"),
        both("delivery: events per publish transaction", *d, "batch", unit=""),
        both("delivery: events/s published", *d, "published_per_s", unit="/s"),
        both(f"delivery: events/s within {_num(bound)} ms", *d, "events_in_bound_per_s", unit="/s"),
        both(
            f"delivery: deliveries/s within {_num(bound)} ms",
            *d,
            "deliveries_in_bound_per_s",
            unit="/s",
        ),
        both("delivery: lost (deliveries)", *d, "lost", unit=""),
        both("delivery: twice", *d, "duplicates", unit=""),
        both("delivery: out of order", *d, "out_of_order", unit=""),
        both("delivery: frames not from this run", *d, "foreign_frames", unit=""),
        both("delivery: latency p50", *d, "latency_ms", "p50", unit="ms"),
        both("delivery: latency p99", *d, "latency_ms", "p99", unit="ms"),
        both("delivery: web tier CPU per delivery", *d, "server_cpu_ms_per_delivery", unit="ms"),
        both("delivery: web tier CPU", *d, "server_cpu_percent", unit="%"),
        both("delivery: Redis CPU per delivery", *d, "redis_cpu_ms_per_delivery", unit="ms"),
        *_pg_rows("delivery: ", _get(one, *d), _get(two, *d), "event"),
        both("delivery: publisher CPU per event", *d, "publisher_cpu_ms_per_event", unit="ms"),
        both("delivery: client processes' CPU", *d, "client_cpu_percent", unit="%"),
        both("POST /api/tasks/: req/s", *w, "req_per_s", unit="/s"),
        both("POST /api/tasks/: p50", *w, "p50_ms", unit="ms"),
        both("POST /api/tasks/: p99", *w, "p99_ms", unit="ms"),
        both("POST /api/tasks/: web tier CPU per request", *w, "server_cpu_ms_per_req", unit="ms"),
        *_pg_rows("POST /api/tasks/: ", _get(one, *w), _get(two, *w), "req"),
        (
            "POST /api/tasks/: non-2xx / socket errors",
            f"{_get(one, *w, 'non_2xx')} / {_get(one, *w, 'socket_errors') or 0}",
            f"{_get(two, *w, 'non_2xx')} / {_get(two, *w, 'socket_errors') or 0}",
            "",
        ),
    ]


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    if isinstance(value, dict):
        return "/".join(str(v) for v in value.values())
    return _num(value)


def render_scale_out(part: dict[str, Any]) -> str:
    widths = (52, 16, 16, 9, 7)
    fmt = "{{:<{}}} {{:>{}}} {{:>{}}} {{:>{}}}  {{:<{}}}".format(*widths)
    lines = [
        "",
        "Scale-out: 1 web instance beside 2 behind nginx (factor = 2 instances / 1; "
        "for rates > 1 is faster, for times and CPU < 1 is cheaper)",
        fmt.format("figure", "1 instance", "2 instances", "factor", "unit"),
        "-" * (sum(widths) + 5),
    ]
    if "1" not in part and "error" in part:
        lines.append(f"  FAILED: {part['error'][:200]}")
        return "\n".join(lines)
    for n in ("1", "2"):
        for what in ("", "delivery", "rest"):
            failed = _get(part, n, what, "error") if what else _get(part, n, "error")
            if failed:
                lines.append(f"  {n} instance(s) {what}: FAILED: {str(failed)[:200]}")
    for label, one, two, unit in _scale_out_rows(part):
        lines.append(
            fmt.format("  " + label[:50], _cell(one), _cell(two), _x(two, one), unit).rstrip()
        )
    if any(_get(part, n, "delivery", "foreign_frames") for n in ("1", "2")):
        lines.append(
            "  WARNING: frames not published by this run reached its sockets: another stack "
            "uses this REDIS_URL's db (Redis pub/sub ignores db numbers; the channel prefix "
            "names the db). Give the bench a Redis DB of its own and run again."
        )
    seconds = [_get(part, n, "seconds") for n in ("1", "2")]
    lines.append(f"  ({seconds[0]} s + {seconds[1]} s)")
    return "\n".join(lines)
