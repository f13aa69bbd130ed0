"""Search at scale: GET /search over `rows` tasks of `owners` users, per term class.

Rows are generated in PostgreSQL (INSERT ... SELECT generate_series, two connections in
parallel on the two cores); the search column is the migration's own STORED generated
column, so PostgreSQL builds every vector exactly as for a task the app creates. The GIN
indexes the migrations left are dropped for the load and re-created from their own
definitions (pg_indexes; one bulk build instead of a million pending-list inserts), then
the table is analyzed.

What the words are, per row i: owner = i mod owners, m = i div owners (the row's number
among its owner's rows, so the words are spread alike within every owner's rows):
- title: "report <deployment|server|invoice|backup|отчёт|задача by m mod 6> <6 hex>"
  (+ " zephyr" when m mod 997 = 1: one or two rows per owner);
- description: "weekly build <alpha|beta|gamma by (m div 6) mod 3> number <i>".

Term classes (a trailing space makes a word whole; without one the last word is also a
prefix, docs/search.md): common = in every row, rare = 1-2 rows per owner, absent = in
none, prefix = `deploym` (1 in 6), two words (1 in 18), Russian (stemmed, 1 in 6). The
baseline is ILIKE '%word%' on title and description, an absent word, over the whole
table (a sequential scan: what search costs without the index).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
from psycopg import sql

from bench.measure import CpuMeter, load_1m
from bench.stats import percentile

MS = 1000.0
TERMS = {
    "common": "report ",
    "rare": "zephyr ",
    "absent": "xylophone ",
    "prefix": "deploym",
    "two_words": "server beta ",
    "russian": "задачи ",
}

_ROWS_SQL = """
INSERT INTO tasks_task (id, owner_id, title, description, kind, params, status, progress,
    error, timeout, attempts, stop_requested, worker, created_at, updated_at, finished_at)
SELECT gen_random_uuid(), %(first_owner)s + i %% %(owners)s,
    'report ' || (ARRAY['deployment','server','invoice','backup','отчёт','задача'])[1 + m %% 6]
        || ' ' || left(md5(i::text), 6) || CASE WHEN m %% 997 = 1 THEN ' zephyr' ELSE '' END,
    'weekly build ' || (ARRAY['alpha','beta','gamma'])[1 + (m / 6) %% 3] || ' number ' || i,
    'echo', '{}'::jsonb, 'completed', 100, '', 60, 1, '', '',
    now() - make_interval(secs => i), now(), now()
FROM generate_series(%(low)s::int, %(high)s::int) AS i,
    LATERAL (SELECT i / %(owners)s AS m) AS row_of_owner
"""


def _search_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of every GIN index on tasks_task, as the migrations
    in the tree left them (read from pg_indexes, so a later migration that replaces the
    index is measured as it is, never an older one re-created)."""
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tasks_task' "
        "AND indexdef ILIKE '%% USING gin %%'"
    ).fetchall()
    return [(name, definition) for name, definition in rows]


def generate(database_url: str, *, rows: int, owners: int, run_id: str) -> dict[str, Any]:
    """Insert `owners` users and `rows` tasks; returns the first owner's id and timings."""
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        indexes = _search_indexes(conn)
        first_owner = conn.execute(
            """
            INSERT INTO auth_user (password, is_superuser, username, first_name, last_name,
                email, is_staff, is_active, date_joined)
            SELECT '!', false, %s || i, '', '', '', false, true, now()
            FROM generate_series(1, %s::int) AS i
            RETURNING id
            """,
            [f"bench_search_{run_id}_", owners],
        ).fetchall()
        owner_ids = sorted(row[0] for row in first_owner)
        if owner_ids[-1] - owner_ids[0] != owners - 1:
            raise RuntimeError("the generated owners' ids are not consecutive")
        for name, _definition in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))

    errors: list[BaseException] = []

    def load(low: int, high: int) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    _ROWS_SQL,
                    {"first_owner": owner_ids[0], "owners": owners, "low": low, "high": high},
                )
        except BaseException as exc:
            errors.append(exc)

    half = rows // 2
    threads = [
        threading.Thread(target=load, args=(1, half)),
        threading.Thread(target=load, args=(half + 1, rows)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    inserted = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _name, definition in indexes:
            conn.execute(definition)
        conn.execute("ANALYZE tasks_task")
        conn.execute("ANALYZE auth_user")
    return {
        "first_owner": owner_ids[0],
        "rows": rows,
        "owners": owners,
        "insert_s": round(inserted - started, 1),
        "index_and_analyze_s": round(time.perf_counter() - inserted, 1),
        "gin_indexes": [name for name, _ in indexes],
    }


def _sql_plan(user_id: int, query: str) -> dict[str, Any]:
    """The selector's own SQL under EXPLAIN ANALYZE: execution time and whether the plan
    used the GIN index (the alternative is the owner btree plus a filter)."""
    from django.contrib.auth import get_user_model

    from search.selectors import task_search_for

    user = get_user_model().objects.get(pk=user_id)
    results = task_search_for(user=user, query=query)
    if results.queryset is None:
        return {}
    plan = results.queryset[:20].explain(analyze=True)
    match = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return {
        "sql_ms": float(match.group(1)) if match else None,
        # Any index scan on a search index (the names are the migrations'), not the owner btree.
        "gin_index": bool(re.search(r"Index Scan on \w*search\w*", plan)),
    }


def _classes(
    url: str, token: str, server_pid: int, redis_url: str, samples: int, seconds: float
) -> dict[str, Any]:
    """GET `url` for each term class, one request at a time: p50 / p99, server CPU."""
    out: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(headers=headers, timeout=30) as http:
        http.get(url, params={"query": "warm up "})
        for name, query in TERMS.items():
            times: list[float] = []
            hits = None
            meter = CpuMeter({"server": server_pid}, redis_url).start()
            deadline = time.monotonic() + seconds
            while len(times) < samples and time.monotonic() < deadline:
                sent = time.perf_counter()
                response = http.get(url, params={"query": query})
                times.append(time.perf_counter() - sent)
                if response.status_code != 200:
                    raise RuntimeError(f"{url} {query!r} -> {response.status_code}")
                hits = response.json().get("count")
            meter.stop()
            ms = [t * MS for t in times]
            out[name] = {
                "query": query,
                "n": len(ms),
                "hits": hits,
                "p50_ms": round(percentile(ms, 50), 2),
                "p99_ms": round(percentile(ms, 99), 2),
                "server_cpu_ms_per_search": meter.per("server", len(ms)),
                **meter.postgres_per(len(ms), "search"),
            }
    return out


def run(
    base_url: str,
    token: str,
    *,
    user_id: int,
    database_url: str,
    daphne_pid: int,
    redis_url: str,
    samples: int,
    seconds_per_class: float,
    prototypes: dict[str, Callable[[], tuple[str, int]]] | None = None,
) -> dict[str, Any]:
    """`prototypes`: by name (the JSON key), a callable that starts a prototype server
    and returns its (search URL, server PID): the lean HTTP path (bench/proto_http.py)
    as "prototype", the asyncio HTTP tier (bench/proto_http_tier.py) as "tier". Each is
    timed the same way, per class, after the product's (so it meets a warmer cache:
    docs/benchmarks.md says so)."""
    out: dict[str, Any] = {
        "classes": _classes(
            f"{base_url}/search", token, daphne_pid, redis_url, samples, seconds_per_class
        )
    }
    for figures in out["classes"].values():
        figures.update(_sql_plan(user_id, figures["query"]))
    for name, start in (prototypes or {}).items():
        try:
            url, pid = start()
            out[name] = _classes(url, token, pid, redis_url, samples, seconds_per_class)
        except Exception as exc:  # a prototype must not cost the product's figures
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    with psycopg.connect(database_url, autocommit=True) as conn:
        ilike: list[float] = []
        for _ in range(3):
            started = time.perf_counter()
            conn.execute(
                "SELECT count(*) FROM tasks_task WHERE title ILIKE %s OR description ILIKE %s",
                ["%xylophone%", "%xylophone%"],
            ).fetchone()
            ilike.append((time.perf_counter() - started) * MS)
    out["ilike_absent_ms"] = round(percentile(ilike, 50), 1)
    absent = out["classes"]["absent"]["p50_ms"]
    out["ilike_over_search_absent"] = round(out["ilike_absent_ms"] / absent, 1) if absent else None
    out["load_1m"] = load_1m()
    return out
