"""What one create costs the database: the spec the hot paths are held to.

A query more here is a query more on every create at full load (docs/caching.md, "What a
create costs"). A create is one statement, so it opens no transaction (or savepoint) of
its own: no BEGIN and COMMIT round trips (taskhub/model_insert.py).
"""

from __future__ import annotations

import pytest

from tasks.models import Task

pytestmark = pytest.mark.django_db


def test_a_rest_create_is_the_user_lookup_and_one_statement(
    alice, client_for, django_assert_num_queries, django_capture_on_commit_callbacks
):
    client = client_for(alice)

    # The JWT's user; then the task, its task.updated event and the owner's event counter
    # that numbers it, all in one statement (notifications.services.publish's `write`).
    with (
        django_assert_num_queries(2),
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        created = client.post("/api/tasks/", {"title": "costed", "kind": "echo"}, format="json")

    assert created.status_code == 201
    assert Task.objects.get(pk=created.json()["id"]).owner == alice
    # Cache versions, metrics, the push and the dispatcher nudge: after commit, no query.
    assert callbacks


def test_a_legacy_create_is_one_insert(
    client, django_assert_num_queries, django_capture_on_commit_callbacks
):
    with django_assert_num_queries(1), django_capture_on_commit_callbacks(execute=True):
        created = client.post("/task/create", {"task": "costed"}, content_type="application/json")

    assert created.status_code == 200
    assert Task.objects.filter(pk=created.json()["task_id"], owner=None).exists()
