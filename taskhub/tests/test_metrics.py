"""GET /metrics in this process: TaskHub's gauges from the database, counters, access rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import Client, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from notifications import protocol
from notifications.redis_client import close_async_redis
from notifications.services import connection_register, connection_unregister, publish
from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float | None:
    """A sample's value; None when it is not served (so `== 0` cannot pass by absence)."""
    return samples.get((name, tuple(sorted(labels.items()))))


def scrape(client: Client | None = None, **extra) -> dict[tuple[str, tuple], float]:
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return samples_of(response.content.decode())


def test_tasks_by_status_equal_the_database(alice, bob):
    for status, count in [("pending", 2), ("in_progress", 1), ("completed", 3), ("failed", 1)]:
        for _ in range(count):
            make_task(owner=alice, status=status)
    make_task(owner=bob, status=TaskStatus.COMPLETED)
    make_task(owner=None, status=TaskStatus.QUEUED)

    samples = scrape()

    for status in TaskStatus.values:
        expected = Task.objects.filter(status=status).count()
        assert value(samples, "taskhub_tasks", status=status) == expected, status
    assert value(samples, "taskhub_tasks", status="completed") == 4
    assert value(samples, "taskhub_tasks", status="cancelled") == 0
    assert value(samples, "taskhub_metrics_source_up", source="database") == 1


def test_dispatcher_lag_is_the_age_of_the_oldest_due_pending_task(alice):
    assert value(scrape(), "taskhub_dispatcher_lag_seconds") == 0
    now = timezone.now()
    waiting = make_task(owner=alice, title="waiting")
    Task.objects.filter(pk=waiting.pk).update(updated_at=now - timedelta(seconds=90))
    # Not due yet, however old: not lag.
    scheduled = make_task(owner=alice, title="scheduled", run_at=now + timedelta(hours=1))
    Task.objects.filter(pk=scheduled.pk).update(updated_at=now - timedelta(days=1))
    old_scheduled = make_task(owner=alice, title="old", run_at=now - timedelta(seconds=30))
    Task.objects.filter(pk=old_scheduled.pk).update(updated_at=now - timedelta(hours=2))
    # Long finished: not lag either.
    done = make_task(owner=alice, status=TaskStatus.COMPLETED)
    Task.objects.filter(pk=done.pk).update(updated_at=now - timedelta(days=3))

    lag = value(scrape(), "taskhub_dispatcher_lag_seconds")

    # 90 s and counting (the database clock measures, at the scrape). The upper bound is
    # no speed limit: it only tells "waiting" from the hours and days of the rows that
    # must not count.
    assert 90 <= lag < 3600


def registry(call, **kwargs):
    """Run one of the registry's async services here, then drop its loop's Redis pool."""

    async def run():
        try:
            return await call(**kwargs)
        finally:
            await close_async_redis()

    return async_to_sync(run)()


def test_websocket_connections_are_the_sockets_the_registry_holds(
    alice, bob, clean_connection_registry
):
    assert value(scrape(), "taskhub_websocket_connections") == 0
    for user, channel in [(alice, "a.one"), (alice, "a.two"), (bob, "b.one")]:
        assert registry(connection_register, user_id=user.pk, channel_name=channel)

    assert value(scrape(), "taskhub_websocket_connections") == 3

    registry(connection_unregister, user_id=alice.pk, channel_name="a.two")
    samples = scrape()
    assert value(samples, "taskhub_websocket_connections") == 2
    assert value(samples, "taskhub_metrics_source_up", source="redis") == 1


def test_events_published_are_counted_after_commit(alice, django_capture_on_commit_callbacks):
    before = value(scrape(), "taskhub_events_published_total", type="task.updated") or 0

    with django_capture_on_commit_callbacks(execute=False):
        publish(user_id=alice.pk, type=protocol.TASK_UPDATED, data={"rolled": "back"})
    with django_capture_on_commit_callbacks(execute=True):
        publish(user_id=alice.pk, type=protocol.TASK_UPDATED, data={"task_id": "x"})

    after = value(scrape(), "taskhub_events_published_total", type="task.updated")
    assert after == before + 1


def test_django_prometheus_request_and_database_metrics_are_served_too(alice):
    make_task(owner=alice)
    samples = scrape()

    names = {name for name, _ in samples}
    assert any(name.startswith("django_http_requests_") for name in names)
    assert any(name.startswith("django_db_execute_") for name in names)


def test_by_default_only_loopback_may_scrape():
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::ffff:127.0.0.1").get("/metrics").status_code == 200

    refused = Client(REMOTE_ADDR="10.1.2.3").get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1")

    assert refused.status_code == 403
    assert refused.json() == {"detail": "Metrics are not served to this address."}


@override_settings(TASKHUB_METRICS_ALLOWED_NETWORKS=["10.0.0.0/8", "fd00::/8"])
def test_allowed_networks_are_cidrs():
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="fd00::5").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
    assert Client(REMOTE_ADDR="192.168.1.1").get("/metrics").status_code == 403


@override_settings(
    TASKHUB_METRICS_TOKEN="s3cret-token", TASKHUB_METRICS_ALLOWED_NETWORKS=["0.0.0.0/0", "::/0"]
)
def test_a_token_is_required_when_one_is_set():
    anywhere = Client(REMOTE_ADDR="203.0.113.9")

    missing = anywhere.get("/metrics")
    wrong = anywhere.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
    not_bearer = anywhere.get("/metrics", HTTP_AUTHORIZATION="Basic s3cret-token")
    right = anywhere.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")

    assert missing.status_code == wrong.status_code == not_bearer.status_code == 401
    assert missing["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert missing.json() == {"detail": "A valid Bearer token is required."}
    assert right.status_code == 200
    assert b"taskhub_tasks" in right.content


@override_settings(
    TASKHUB_METRICS_TOKEN="s3cret-token", TASKHUB_METRICS_ALLOWED_NETWORKS=["127.0.0.0/8"]
)
def test_token_and_networks_together_both_must_pass():
    token = {"HTTP_AUTHORIZATION": "Bearer s3cret-token"}

    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics", **token).status_code == 200
    assert Client(REMOTE_ADDR="10.0.0.1").get("/metrics", **token).status_code == 403
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 401


def test_only_get_is_served():
    assert Client().post("/metrics").status_code == 405
