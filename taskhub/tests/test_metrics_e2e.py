"""/metrics across processes: a real Daphne and a real Celery worker share a
PROMETHEUS_MULTIPROC_DIR, and the web's scrape reports what the worker did."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from conftest import access_token_for
from devserver import testing
from notifications.models import Event
from taskhub.tests.test_metrics import samples_of, value
from tasks.models import Task, TaskStatus

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def scrape(base_url: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return samples_of(response.text)


@pytest.fixture
def multiprocess_stack(tmp_path, purge_broker):
    """Daphne and a worker writing their metrics to one fresh directory, as `make run` does."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
    web, base_url = testing.start_daphne(extra_env=env)
    try:
        worker = testing.start_worker(extra_env=env)
    except BaseException:
        web.stop()
        raise
    node = worker.args[worker.args.index("-n") + 1].replace("%h", socket.gethostname())
    yield base_url, node
    worker.stop()
    web.stop()


def test_the_webs_scrape_reports_what_the_worker_did(alice, multiprocess_stack):
    base_url, worker_node = multiprocess_stack
    headers = {"Authorization": f"Bearer {access_token_for(alice)}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as api:
        for number in range(3):
            created = api.post("/api/tasks/", json={"title": f"echo {number}", "kind": "echo"})
            assert created.status_code == 201, created.text
        failing = api.post(
            "/api/tasks/",
            json={
                "title": "fails",
                "kind": "simulate",
                "params": {"seconds": 0.2, "steps": 2, "fail_at_step": 1},
            },
        )
        assert failing.status_code == 201, failing.text

    def all_finished() -> bool:
        return not Task.objects.exclude(
            status__in=[TaskStatus.COMPLETED, TaskStatus.FAILED]
        ).exists()

    testing.wait_until(all_finished, timeout=30, message="the worker to finish all 4 tasks")
    ran_on = set(Task.objects.values_list("worker", flat=True))
    assert ran_on == {worker_node}, f"another worker on this broker took tasks: {ran_on}"
    # The worker counts after its commit; the task rows are visible a moment before.
    testing.wait_until(
        lambda: (
            value(
                scrape(base_url), "taskhub_tasks_finished_total", kind="simulate", outcome="failed"
            )
            == 1
        ),
        timeout=10,
        message="the failure to be counted",
    )
    samples = scrape(base_url)

    # Counted by the web process that served the creates.
    assert value(samples, "taskhub_tasks_created_total", kind="echo") == 3
    assert value(samples, "taskhub_tasks_created_total", kind="simulate") == 1
    # Counted in the worker's pool processes, reported by the web.
    completed = {"kind": "echo", "outcome": "completed"}
    assert value(samples, "taskhub_tasks_finished_total", **completed) == 3
    assert value(samples, "taskhub_task_processing_seconds_count", **completed) == 3
    assert value(samples, "taskhub_task_processing_seconds_sum", **completed) > 0
    failed = {"kind": "simulate", "outcome": "failed"}
    assert value(samples, "taskhub_task_processing_seconds_count", **failed) == 1
    # Not a speed claim: the processor sleeps 0.1 s before its failing step.
    assert value(samples, "taskhub_task_processing_seconds_sum", **failed) >= 0.1
    # Events: published from both processes, equal to the event log.
    assert value(samples, "taskhub_events_published_total", type="task.updated") == (
        Event.objects.filter(type="task.updated").count()
    )
    # From the database at scrape time.
    assert value(samples, "taskhub_tasks", status="completed") == 3
    assert value(samples, "taskhub_tasks", status="failed") == 1
    assert value(samples, "taskhub_tasks", status="pending") == 0
    assert value(samples, "taskhub_dispatcher_lag_seconds") == 0
    # django-prometheus' own request metrics come through the same registry.
    assert any(name.startswith("django_http_requests_") for name, _ in samples)


def test_open_websockets_are_counted(alice, clean_connection_registry, daphne_server):
    url = daphne_server.replace("http", "ws", 1) + f"/ws?token={access_token_for(alice)}"
    assert value(scrape(daphne_server), "taskhub_websocket_connections") == 0

    with ws_connect(url, origin=daphne_server) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "welcome"
        assert value(scrape(daphne_server), "taskhub_websocket_connections") == 1

    testing.wait_until(
        lambda: value(scrape(daphne_server), "taskhub_websocket_connections") == 0,
        timeout=10,
        message="the closed socket to stop counting",
    )
