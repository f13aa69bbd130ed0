"""Personas, the real-process fixtures and the small helpers shared by every app's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from chat.models import ChatRoom
from devserver import testing
from notifications.models import Event
from notifications.redis_client import sync_redis
from taskhub.celery import app as celery_app
from tasks.models import Task
from tasks.nudge import clear_nudges


@pytest.fixture
def alice(django_user_model) -> User:
    return django_user_model.objects.create_user(username="alice", password="alice-pass-123")


@pytest.fixture
def bob(django_user_model) -> User:
    return django_user_model.objects.create_user(username="bob", password="bob-pass-123")


def access_token_for(user: User) -> str:
    return str(RefreshToken.for_user(user).access_token)


@pytest.fixture
def operator(django_user_model) -> Client:
    """A superuser signed in to the admin."""
    django_user_model.objects.create_superuser("operator", "op@example.com", "operator-pass-1")
    client = Client()
    client.login(username="operator", password="operator-pass-1")
    return client


@pytest.fixture
def client_for() -> Callable[[User | None], APIClient]:
    """An API client that authenticates as `user` with a real JWT (None: anonymous)."""

    def make(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(user)}")
        return client

    return make


def drop_pending_messages() -> None:
    """Drop the messages waiting in the broker (run, dispatch) and the nudge flag one of
    them may have left set (it would hold back the next nudge)."""
    celery_app.control.purge()
    clear_nudges()


@pytest.fixture
def purge_broker() -> None:
    """Nothing left over from an earlier test: a new worker starts clean."""
    drop_pending_messages()


@pytest.fixture
def celery_worker_process(transactional_db, purge_broker) -> Iterator[testing.ManagedProcess]:
    """A real `celery -A taskhub worker` on the test database."""
    worker = testing.start_worker()
    yield worker
    worker.stop()


@pytest.fixture
def daphne_server(transactional_db) -> Iterator[str]:
    """A real Daphne serving taskhub.asgi on a free port; yields its base URL."""
    web, base_url = testing.start_daphne()
    yield base_url
    web.stop()


@pytest.fixture
def general_room(db) -> ChatRoom:
    """The room the chat data migration creates; a transactional test before this one
    flushed the tables (the migration's row with them), so make sure it is there."""
    room, _ = ChatRoom.objects.get_or_create(
        slug="general", defaults={"name": "General", "is_public": True}
    )
    return room


def clear_connection_registry() -> None:
    """Forget every open-socket entry in Redis (notifications' connection registry)."""
    redis = sync_redis()
    keys = list(redis.scan_iter("taskhub:ws:*"))
    if keys:
        redis.delete(*keys)


@pytest.fixture
def clean_connection_registry() -> None:
    """Open-socket counts left in Redis by an earlier test (or its killed server) must not
    count against this one: neither the per-user limit nor the connections gauge."""
    clear_connection_registry()


# --- A task as a user follows it -----------------------------------------------------------


def status_of(task: Task) -> str:
    task.refresh_from_db()
    return task.status


def wait_for_status(task: Task, status: str, timeout: float = 30) -> Task:
    """Wait (at most `timeout` s: a bound on the wait, not a speed claim) for `status`."""
    testing.wait_until(lambda: status_of(task) == status, timeout=timeout, message=f"task {status}")
    return task


def wait_until_finished(task: Task, timeout: float = 30) -> Task:
    """Wait for any terminal status; `task` is refreshed."""

    def finished() -> bool:
        task.refresh_from_db()
        return task.is_terminal

    testing.wait_until(finished, timeout=timeout, message=f"{task.title!r} to finish")
    return task


def statuses_seen(task: Task) -> list[str]:
    """The statuses the task's events announced, in order."""
    return [event.data["status"] for event in Event.objects.filter(task_id=task.pk).order_by("seq")]
