"""The task API's cache (tasks/cache.py): fast when nothing changed, never stale after a change."""

from __future__ import annotations

import pytest
from django.core.cache import cache as django_cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from tasks import cache, services
from tasks.api.serializers import TaskOutputSerializer
from tasks.models import TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def signed_in(user) -> APIClient:
    # force_authenticate: authentication itself makes no query, so a count of zero below
    # means the view made none.
    client = APIClient()
    client.force_authenticate(user=user)
    return client


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_second_read_of_an_unchanged_task_makes_no_database_query(alice):
    task = make_task(owner=alice, title="cached")
    client = signed_in(alice)
    first = client.get(f"/api/tasks/{task.pk}/")

    with CaptureQueriesContext(connection) as queries:
        second = client.get(f"/api/tasks/{task.pk}/")

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert [query["sql"] for query in queries.captured_queries] == []


def test_with_a_jwt_the_second_read_only_looks_up_the_user(alice, client_for):
    task = make_task(owner=alice, title="cached")
    client = client_for(alice)
    client.get(f"/api/tasks/{task.pk}/")

    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/api/tasks/{task.pk}/")

    assert response.json()["title"] == "cached"
    # simplejwt loads the user on every request; nothing reads tasks_task.
    assert [q["sql"] for q in queries.captured_queries if "tasks_task" in q["sql"]] == []


def test_a_cached_read_after_a_status_change_shows_the_new_status(
    alice, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice, title="to cancel")
    client = signed_in(alice)
    assert client.get(f"/api/tasks/{task.pk}/").json()["status"] == "pending"
    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"/api/tasks/{task.pk}/").json()["status"] == "pending"
    assert len(queries) == 0  # served from the cache

    with django_capture_on_commit_callbacks(execute=True):
        services.task_cancel(task=task)

    detail = client.get(f"/api/tasks/{task.pk}/").json()
    assert detail["status"] == "cancelled"
    assert detail["error"] == "cancelled on request"


def test_a_fill_that_raced_a_commit_is_never_served(alice, django_capture_on_commit_callbacks):
    """A reader reads the old row, the change commits and bumps the version, then the reader
    stores what it read: that entry must be dead, not served."""
    task = make_task(owner=alice, title="raced")

    def slow_fill() -> dict:
        stale = dict(TaskOutputSerializer(task).data)  # read before the change...
        with django_capture_on_commit_callbacks(execute=True):
            services.task_cancel(task=task)  # ...which commits and bumps meanwhile
        return stale

    raced = cache.task_detail_cached(user=alice, task_id=task.pk, fill=slow_fill)

    assert raced["status"] == "pending"  # what that one reader saw
    assert signed_in(alice).get(f"/api/tasks/{task.pk}/").json()["status"] == "cancelled"


def test_progress_reaches_a_cached_detail(alice, django_capture_on_commit_callbacks):
    task = make_task(owner=alice, title="running", status=TaskStatus.IN_PROGRESS)
    client = signed_in(alice)
    assert client.get(f"/api/tasks/{task.pk}/").json()["progress"] == 0

    with django_capture_on_commit_callbacks(execute=True):
        services.task_report_progress(task=task, progress=40)

    assert client.get(f"/api/tasks/{task.pk}/").json()["progress"] == 40


def test_bob_never_gets_alices_cached_task(alice, bob):
    task = make_task(owner=alice, title="private")
    assert signed_in(alice).get(f"/api/tasks/{task.pk}/").status_code == 200

    response = signed_in(bob).get(f"/api/tasks/{task.pk}/")

    assert response.status_code == 404
    assert response.json() == {"detail": "No such task."}


def test_the_pending_list_is_cached_and_a_create_invalidates_it(
    alice, django_capture_on_commit_callbacks
):
    make_task(owner=alice, title="first")
    client = signed_in(alice)
    before = client.get("/api/tasks/?status=pending").json()
    with CaptureQueriesContext(connection) as queries:
        again = client.get("/api/tasks/?status=pending").json()
    assert len(queries) == 0
    assert again == before

    with django_capture_on_commit_callbacks(execute=True):
        services.task_create(owner=alice, title="second")

    after = client.get("/api/tasks/?status=pending").json()
    assert before["count"] == 1
    assert after["count"] == 2
    assert [task["title"] for task in after["results"]] == ["second", "first"]


def test_a_cached_first_page_links_to_the_next_page(alice):
    for number in range(25):
        make_task(owner=alice, title=f"task {number}")
    client = signed_in(alice)
    client.get("/api/tasks/")

    with CaptureQueriesContext(connection) as queries:
        page = client.get("/api/tasks/").json()
    following = client.get(page["next"]).json()

    assert len(queries) == 0
    assert page["count"] == 25
    assert len(page["results"]) == 20
    assert page["previous"] is None
    assert page["next"] == "http://testserver/api/tasks/?page=2"
    assert len(following["results"]) == 5


def test_the_dashboards_first_page_is_cached_in_its_own_size(
    alice, django_capture_on_commit_callbacks
):
    for number in range(25):
        make_task(owner=alice, title=f"task {number}")
    client = signed_in(alice)
    dashboard = "/api/tasks/?ordering=-created_at&page_size=50"
    first = client.get(dashboard).json()

    with CaptureQueriesContext(connection) as queries:
        again = client.get(dashboard).json()
    default = client.get("/api/tasks/").json()
    with django_capture_on_commit_callbacks(execute=True):
        services.task_create(owner=alice, title="newest")
    after = client.get(dashboard).json()

    assert len(queries) == 0
    assert again == first
    assert (len(first["results"]), first["next"]) == (25, None)
    assert len(default["results"]) == 20
    assert after["results"][0]["title"] == "newest"


def test_filtered_or_ordered_lists_are_not_cached(alice):
    make_task(owner=alice, title="a", kind="echo")
    client = signed_in(alice)
    client.get("/api/tasks/?kind=echo&ordering=title")

    with CaptureQueriesContext(connection) as queries:
        client.get("/api/tasks/?kind=echo&ordering=title")

    assert len(queries) > 0


def test_hits_and_misses_are_counted_by_cache(alice):
    task = make_task(owner=alice, title="counted")
    client = signed_in(alice)
    hits = sample("taskhub_cache_hits_total", cache="task_detail")
    misses = sample("taskhub_cache_misses_total", cache="task_detail")

    client.get(f"/api/tasks/{task.pk}/")
    client.get(f"/api/tasks/{task.pk}/")
    client.get(f"/api/tasks/{task.pk}/")

    assert sample("taskhub_cache_misses_total", cache="task_detail") == misses + 1
    assert sample("taskhub_cache_hits_total", cache="task_detail") == hits + 2


def test_the_dispatcher_and_the_runners_services_never_read_the_cache(
    alice, django_capture_on_commit_callbacks
):
    task = make_task(owner=alice, title="work")
    reads = sample("django_cache_get_total", backend="redis")
    # The counter is live (a missing one would read 0 before and after): a read moves it.
    signed_in(alice).get(f"/api/tasks/{task.pk}/")
    assert sample("django_cache_get_total", backend="redis") > reads
    reads = sample("django_cache_get_total", backend="redis")

    with django_capture_on_commit_callbacks(execute=False):  # no run message is sent
        services.dispatch_pending_tasks()
    with django_capture_on_commit_callbacks(execute=True):  # the bumps do run
        services.task_start(task_id=task.pk, worker="w1")
        services.task_complete(task_id=task.pk, result={"ok": True})
        services.reap_stalled_tasks()

    assert sample("django_cache_get_total", backend="redis") == reads


def test_a_bump_moves_a_live_version_on_by_one_and_restarts_an_evicted_one_fresh(alice):
    """Both keys in one round trip (tasks/cache.py); an evicted version must never come
    back to a number an old entry may still live under."""
    task = make_task(owner=alice, title="versions")
    client = signed_in(alice)
    client.get(f"/api/tasks/{task.pk}/")  # starts the task's version
    task_key = f"tasks:version:task:{task.pk}"
    owner_key = f"tasks:version:owner:{alice.pk}"
    live = django_cache.get(task_key)
    django_cache.delete(owner_key)  # evicted

    cache.task_versions_bump(task_id=task.pk, owner_id=alice.pk)

    assert django_cache.get(task_key) == live + 1
    restarted = django_cache.get(owner_key)
    assert restarted is not None and restarted > 1 << 32
    assert 0 < django_cache.ttl(owner_key) <= cache.VERSION_TTL
