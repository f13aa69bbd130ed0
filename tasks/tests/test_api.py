"""The REST API as a client sees it: auth, create, list, detail, cancel, retry, scoping."""

from __future__ import annotations

import uuid

import pytest
from rest_framework.test import APIClient

from tasks.models import TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db


def test_a_new_user_registers_gets_a_token_and_creates_a_task():
    client = APIClient()
    registered = client.post(
        "/api/auth/register/",
        {"username": "carol", "password": "a-long-pass-phrase"},
        format="json",
    )
    assert registered.status_code == 201, registered.content
    tokens = client.post(
        "/api/auth/token/", {"username": "carol", "password": "a-long-pass-phrase"}, format="json"
    )
    assert tokens.status_code == 200
    assert set(tokens.json()) == {"access", "refresh"}

    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens.json()['access']}")
    created = client.post("/api/tasks/", {"title": "My first task"}, format="json")

    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "pending"
    assert body["kind"] == "simulate"
    assert body["timeout"] == 240
    assert set(body) >= {
        "id", "title", "description", "kind", "params", "status", "progress", "result", "error",
        "timeout", "attempts", "run_at", "created_at", "updated_at", "queued_at", "started_at",
        "finished_at",
    }  # fmt: skip


def test_the_refresh_token_gives_a_new_access_token(alice):
    client = APIClient()
    tokens = client.post(
        "/api/auth/token/", {"username": "alice", "password": "alice-pass-123"}, format="json"
    ).json()

    refreshed = client.post(
        "/api/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json"
    )

    assert refreshed.status_code == 200
    assert "access" in refreshed.json()


@pytest.mark.parametrize(
    ("password", "message_part"),
    [("short", "too short"), ("password123", "too common"), ("12345678901", "entirely numeric")],
)
def test_registration_applies_djangos_password_validators(password, message_part):
    response = APIClient().post(
        "/api/auth/register/", {"username": "dave", "password": password}, format="json"
    )

    assert response.status_code == 400
    assert any(message_part in message for message in response.json()["password"])


def test_a_taken_username_is_refused(alice):
    response = APIClient().post(
        "/api/auth/register/", {"username": "Alice", "password": "another-long-pass"}, format="json"
    )

    assert response.status_code == 400
    assert "username" in response.json()


def test_without_a_token_the_api_answers_401_in_json():
    response = APIClient().get("/api/tasks/")

    assert response.status_code == 401
    assert "detail" in response.json()


def test_bob_cannot_see_or_touch_alices_task(alice, bob, client_for):
    task = make_task(owner=alice, status=TaskStatus.FAILED)
    bob_client = client_for(bob)

    for response in (
        bob_client.get(f"/api/tasks/{task.pk}/"),
        bob_client.post(f"/api/tasks/{task.pk}/cancel/"),
        bob_client.post(f"/api/tasks/{task.pk}/retry/"),
    ):
        assert response.status_code == 404
    assert bob_client.get("/api/tasks/").json()["count"] == 0
    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED


def test_an_unknown_task_id_is_404_in_json(alice, client_for):
    response = client_for(alice).get(f"/api/tasks/{uuid.uuid4()}/")

    assert response.status_code == 404
    assert response.json() == {"detail": "No such task."}


def test_list_filters_by_status_and_kind_and_orders(alice, client_for):
    make_task(owner=alice, title="b-pending", kind="simulate")
    make_task(owner=alice, title="a-done", kind="echo", status=TaskStatus.COMPLETED)
    make_task(owner=alice, title="c-done", kind="simulate", status=TaskStatus.COMPLETED)
    client = client_for(alice)

    completed = client.get("/api/tasks/?status=completed&ordering=title").json()
    echo = client.get("/api/tasks/?kind=echo").json()

    assert [task["title"] for task in completed["results"]] == ["a-done", "c-done"]
    assert [task["title"] for task in echo["results"]] == ["a-done"]


def test_list_refuses_an_unknown_status_filter(alice, client_for):
    response = client_for(alice).get("/api/tasks/?status=done")

    assert response.status_code == 400
    assert "status" in response.json()


def test_page_size_is_capped_at_100(alice, client_for):
    for number in range(105):
        make_task(owner=alice, title=f"task {number}")

    page = client_for(alice).get("/api/tasks/?page_size=500").json()

    assert page["count"] == 105
    assert len(page["results"]) == 100
    assert page["next"] is not None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"title": "t", "kind": "rm-rf"}, "kind"),
        ({"title": "t", "timeout": 0}, "timeout"),
        ({"title": "t", "timeout": "soon"}, "timeout"),
        ({"title": "t", "timeout": 999_999}, "timeout"),
        ({"title": "t", "params": [1, 2]}, "params"),
        ({"title": "t", "run_at": "tomorrow"}, "run_at"),
    ],
)
def test_invalid_create_is_400_naming_the_field(alice, client_for, payload, field):
    response = client_for(alice).post("/api/tasks/", payload, format="json")

    assert response.status_code == 400
    assert field in response.json()


def test_malformed_json_is_400_with_a_message(alice, client_for):
    response = client_for(alice).post(
        "/api/tasks/", data="{not json", content_type="application/json"
    )

    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_an_oversized_body_is_refused(alice, client_for):
    response = client_for(alice).post(
        "/api/tasks/", {"title": "t", "description": "x" * 400_000}, format="json"
    )

    assert response.status_code in (400, 413)


def test_cancel_then_retry_over_the_api(alice, client_for):
    client = client_for(alice)
    task_id = client.post("/api/tasks/", {"title": "to cancel"}, format="json").json()["id"]

    cancelled = client.post(f"/api/tasks/{task_id}/cancel/")
    cancel_again = client.post(f"/api/tasks/{task_id}/cancel/")
    retried = client.post(f"/api/tasks/{task_id}/retry/")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancel_again.status_code == 409
    assert "already cancelled" in cancel_again.json()["detail"]
    assert retried.status_code == 200
    assert retried.json()["status"] == "pending"
    assert retried.json()["attempts"] == 2


def test_the_openapi_schema_and_docs_are_served(alice, client_for):
    schema = client_for(alice).get("/api/schema/")
    docs = client_for(alice).get("/api/docs/")

    assert schema.status_code == 200
    assert b"/api/tasks/" in schema.content
    assert docs.status_code == 200


def test_healthz_and_readyz_report_ok():
    client = APIClient()

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
