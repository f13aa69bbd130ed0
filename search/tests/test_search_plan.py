"""The search uses the GIN index on (owner_id, search_vector), forced and unforced."""

from __future__ import annotations

import pytest
from django.db import connection

from search.selectors import task_search_for

pytestmark = pytest.mark.django_db

INDEX = "task_search_vector_idx"


def plan_of(results) -> str:
    return results.queryset.explain()


def insert_tasks(owner, count: int, *, every: int) -> None:
    """`count` tasks of `owner` in one statement, every `every`-th titled "kubernetes
    upgrade N". PostgreSQL computes each row's search_vector as it inserts it."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO tasks_task (id, owner_id, title, description, kind, params, status,
                progress, error, timeout, attempts, stop_requested, worker, created_at,
                updated_at)
            SELECT gen_random_uuid(), %s,
                CASE WHEN n %% %s = 0 THEN 'kubernetes upgrade ' || n
                     ELSE 'routine job ' || n END,
                'nothing special about row ' || n, 'simulate', '{}', 'completed',
                100, '', 60, 1, '', '', now() - n * interval '1 second', now()
            FROM generate_series(1, %s) AS n
            """,
            [owner.pk, every, count],
        )
        cursor.execute("ANALYZE tasks_task")


def test_the_search_predicate_is_answered_from_the_gin_index(alice):
    insert_tasks(alice, 300, every=100)

    with connection.cursor() as cursor:
        # For this test's transaction only (rolled back after it): no sequential scan, and
        # none of the owner indexes a table this small would rightly prefer. What is left
        # shows whether the @@ predicate, as the selector writes it (web syntax, exclusion
        # and prefix included), can be answered from the GIN index at all; if it could not,
        # the plan would be a (disabled) Seq Scan.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks_task' "
            "AND indexdef LIKE '%%(owner_id%%' AND indexdef NOT LIKE '%%USING gin%%'"
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f'DROP INDEX "{name}"')
        plan = plan_of(task_search_for(user=alice, query="kubernetes or deploy -staging upgr"))

    assert f"Bitmap Index Scan on {INDEX}" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_on_a_large_table_the_planner_picks_the_gin_index_by_itself(alice):
    insert_tasks(alice, 20_000, every=7_000)

    results = task_search_for(user=alice, query="kubernetes")
    plan = plan_of(results)

    assert f"Bitmap Index Scan on {INDEX}" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert results.count() == 2
    # Equal ranks: newest first (row 7000 was created 7000 s after row 14000).
    assert [hit.task.title for hit in results[0:10]] == [
        "kubernetes upgrade 7000",
        "kubernetes upgrade 14000",
    ]


def test_a_word_common_in_the_table_but_rare_for_alice_is_found_through_her_own_entries(alice, bob):
    """A sixth of Bob's 20,000 tasks say "kubernetes" (the proportion of a common word in
    bench/search_scale.py's rows); Alice has 2 among 1,000. The index holds the owner too,
    so her search does not read the word's whole posting list."""
    insert_tasks(bob, 20_000, every=6)
    insert_tasks(alice, 1_000, every=500)

    results = task_search_for(user=alice, query="kubernetes ")
    plan = plan_of(results)

    assert f"Bitmap Index Scan on {INDEX}" in plan, plan
    index_condition = plan.split(f"Bitmap Index Scan on {INDEX}")[1].split("\n")[1]
    assert "owner_id" in index_condition and "@@" in index_condition, plan
    assert results.count() == 2
