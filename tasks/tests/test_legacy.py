"""The original Go service's endpoints, byte for byte."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from tasks.models import Task, TaskStatus

pytestmark = pytest.mark.django_db


def create(client: Client, body: bytes | str):
    return client.post("/task/create", data=body, content_type="application/json")


def test_create_answers_like_the_go_service():
    response = create(Client(), '{"task": "resize the photos"}')

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    task = Task.objects.get()
    assert response.content == f'{{"task_id":"{task.pk}","status":"success"}}\n'.encode()
    assert task.owner is None
    assert task.kind == "simulate"


def test_check_result_answers_like_the_go_service():
    task_id = json.loads(create(Client(), '{"task": "resize the photos"}').content)["task_id"]

    response = Client().get(f"/task/check-result?task_id={task_id}")

    assert response.status_code == 200
    body = response.content.decode()
    assert body.endswith("}\n")
    assert list(json.loads(body)) == [
        "Task",
        "CreatedAt",
        "Task_identification",
        "Result",
        "Status",
    ]
    payload = json.loads(body)
    assert payload["Task"] == "resize the photos"
    assert payload["Task_identification"] == task_id
    assert payload["Status"] == "in progress"
    assert payload["Result"] == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", payload["CreatedAt"])


@pytest.mark.parametrize(
    ("status", "legacy_status"),
    [
        (TaskStatus.PENDING, "in progress"),
        (TaskStatus.QUEUED, "in progress"),
        (TaskStatus.IN_PROGRESS, "in progress"),
        (TaskStatus.COMPLETED, "completed"),
        (TaskStatus.FAILED, "failed"),
        (TaskStatus.CANCELLED, "failed"),
    ],
)
def test_statuses_map_to_the_three_legacy_words(status, legacy_status):
    task = Task.objects.create(title="t", description="t", timeout=5, status=status)

    payload = Client().get(f"/task/check-result?task_id={task.pk}").json()

    assert payload["Status"] == legacy_status


def test_a_completed_task_shows_its_result_as_text():
    task = Task.objects.create(
        title="t", timeout=5, status=TaskStatus.COMPLETED, result={"steps": 10}
    )

    payload = Client().get(f"/task/check-result?task_id={task.pk}").json()

    assert payload["Result"] == '{"steps":10}'


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"task": ""}', b'{"task": 42}', b'{"other": "x"}']
)
def test_bad_create_bodies_get_a_json_error_and_create_nothing(body):
    response = create(Client(), body)

    assert response.status_code == 400
    assert "error" in response.json()
    assert not Task.objects.exists()


# A fixed unknown id: the test ids must be the same in every pytest-xdist worker.
@pytest.mark.parametrize("task_id", ["", "not-a-uuid", "6f1c2a9e-0000-4000-8000-000000000000"])
def test_unknown_or_malformed_ids_get_a_json_error(task_id):
    response = Client().get(f"/task/check-result?task_id={task_id}")

    assert response.status_code in (400, 404)
    assert "error" in response.json()


def test_an_owned_task_is_not_visible_through_the_anonymous_api(alice):
    task = Task.objects.create(owner=alice, title="private", timeout=5)

    response = Client().get(f"/task/check-result?task_id={task.pk}")

    assert response.status_code == 404


def test_create_only_accepts_post():
    assert Client().get("/task/create").status_code == 405
