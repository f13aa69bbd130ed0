"""taskhub/outages.py: one log line when a backing service goes away, one when it is back,
and which errors count as the service being away (docs/running.md, "When Redis or
PostgreSQL is down"). The real outages are staged in test_outages.py."""

from __future__ import annotations

import logging

import kombu.exceptions
import psycopg
import pytest
import redis
from django.db import InterfaceError, OperationalError
from django_redis.exceptions import ConnectionInterrupted

from taskhub import outages


def _django_error(cause: Exception) -> OperationalError:
    """What Django raises for a psycopg error: its own class, the original as __cause__."""
    try:
        raise OperationalError(str(cause)) from cause
    except OperationalError as exc:
        return exc


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(caplog):
    outage = outages.Outage("Redis")
    caplog.set_level(logging.WARNING, logger="taskhub.outages")

    for _ in range(50):
        outage.failed(redis.ConnectionError("Error 111 connecting"), "rate limits are not checked")
    assert outage.down
    assert [r.getMessage() for r in caplog.records] == [
        "Redis unavailable (ConnectionError: Error 111 connecting): rate limits are not "
        "checked; further failures are counted, not logged, until it answers again"
    ]
    assert all(r.exc_info is None for r in caplog.records)

    caplog.clear()
    outage.recovered()
    outage.recovered()
    assert not outage.down
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("Redis available again after ")
    assert caplog.records[0].getMessage().endswith("; 50 operation(s) failed meanwhile")

    caplog.clear()
    outage.failed(redis.TimeoutError("Timeout reading"), "rate limits are not checked")
    assert len(caplog.records) == 1, "a new outage is logged again"


def test_recovered_without_an_outage_logs_nothing(caplog):
    outages.Outage("PostgreSQL").recovered()
    assert caplog.records == []


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("refused"),
        redis.BusyLoadingError("loading"),
        redis.TimeoutError("timeout"),
        ConnectionInterrupted(connection=None),
        kombu.exceptions.OperationalError("Error 111 connecting"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_what_a_redis_that_is_away_raises_is_an_outage(error):
    assert outages.is_redis_outage(error)


def test_a_refused_redis_command_is_a_bug_not_an_outage():
    assert not outages.is_redis_outage(redis.ResponseError("WRONGTYPE"))


@pytest.mark.parametrize(
    "error",
    [
        _django_error(psycopg.OperationalError("connection refused")),  # no SQLSTATE
        _django_error(psycopg.errors.AdminShutdown("terminating connection")),
        _django_error(psycopg.errors.CannotConnectNow("the database system is starting up")),
        InterfaceError("connection already closed"),
    ],
)
def test_a_postgresql_that_is_away_is_an_outage_and_a_503(error):
    assert outages.is_database_outage(error)
    assert outages.is_database_error(error)


def test_a_deadlock_is_a_503_but_not_an_outage():
    deadlock = _django_error(psycopg.errors.DeadlockDetected("deadlock detected"))
    assert outages.is_database_error(deadlock)
    assert not outages.is_database_outage(deadlock)


def test_a_programming_error_is_neither():
    from django.db import ProgrammingError

    assert not outages.is_database_error(ProgrammingError("syntax error"))
