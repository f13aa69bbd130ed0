"""A database error that is not an outage is a bug or the server's own trouble, and says so:
the API answers 500 with the traceback in the log (not 503 "try again", which would hide
it from everyone), and a run whose outcome write meets one fails at once saying why (not
retried until the hard time limit). The errors here are real PostgreSQL ones: a statement
cancelled while it waits for a row lock (tasks/tests/row_lock.py). The outages themselves
are in test_outages.py, the classification in test_outage_log.py."""

from __future__ import annotations

import logging

import pytest
from rest_framework.test import APIClient

from conftest import access_token_for
from taskhub import outages
from tasks import services
from tasks.models import TaskStatus
from tasks.tests.factories import make_task
from tasks.tests.row_lock import RowLock

pytestmark = pytest.mark.django_db(transaction=True)  # the lock holder's own connection

CANCELLED_STATEMENT = "canceling statement due to user request"


def test_a_cancelled_statement_answers_500_with_its_traceback_not_503(alice, caplog):
    task = make_task(owner=alice, status=TaskStatus.QUEUED)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(alice)}")

    with RowLock(task.pk) as lock:
        lock.when_waited_for(lock.cancel_the_waiter)
        response = client.post(f"/api/tasks/{task.pk}/cancel/")

    assert response.status_code == 500, response.content
    assert "Retry-After" not in response
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert any(CANCELLED_STATEMENT in str(r.exc_info[1]) for r in logged), caplog.text
    assert not outages.DATABASE.down


RECORD_BLOCKED: list[RowLock] = []


def returns_while_its_row_is_locked(ctx) -> dict:
    """Returns with its task's row locked by another session, which cancels the outcome
    write that waits for it (a real QueryCanceled, PostgreSQL up), then lets go."""
    lock = RowLock(ctx.task.pk)
    lock.when_waited_for(lock.cancel_the_waiter)
    RECORD_BLOCKED.append(lock)
    return {"done": True}


def test_an_outcome_write_that_fails_while_postgresql_is_up_fails_the_task_at_once(
    alice, settings, caplog
):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "locked": "taskhub.tests.test_database_errors.returns_while_its_row_is_locked",
    }
    task = make_task(owner=alice, kind="locked", status=TaskStatus.QUEUED)

    try:
        services.task_run(task_id=task.pk, worker="test@host")
    finally:
        for lock in RECORD_BLOCKED:
            lock.__exit__(None, None, None)
        RECORD_BLOCKED.clear()

    task.refresh_from_db()
    # Not retried as if PostgreSQL were away (it would then have completed once the lock
    # was let go): the write's own error, at once.
    assert task.status == TaskStatus.FAILED
    assert task.error.startswith("recording the result failed: ")
    assert CANCELLED_STATEMENT in task.error
    assert task.result is None
    assert not outages.DATABASE.down
    assert "PostgreSQL unavailable" not in caplog.text
