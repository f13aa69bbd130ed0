"""Personas and the real-process fixtures shared by every app's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from devserver import testing
from taskhub.celery import app as celery_app
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
def client_for() -> Callable[[User | None], APIClient]:
    """An API client that authenticates as `user` with a real JWT (None: anonymous)."""

    def make(user: User | None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(user)}")
        return client

    return make


@pytest.fixture
def purge_broker() -> None:
    """Drop run messages left over from an earlier test so a new worker starts clean, and
    the nudge flag that one of them may have left set (it would hold back the next nudge)."""
    celery_app.control.purge()
    clear_nudges()


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
