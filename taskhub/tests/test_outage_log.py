"""taskhub/outages.py: one log line when a backing service goes away, one when it is back,
and which errors count as the service being away (docs/running.md, "When Redis or
PostgreSQL is down"). The real outages are staged in test_outages.py."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import grpc
import kombu.exceptions
import psycopg
import psycopg_pool
import pytest
import redis
from django.db import InterfaceError, OperationalError
from django.test import RequestFactory
from django_redis.exceptions import ConnectionInterrupted

from taskhub import api_errors, outages
from tasks.grpc.errors import to_rpc_abort


def _django_error(cause: Exception) -> OperationalError:
    """What Django raises for a psycopg error: its own class, the original as __cause__."""
    try:
        raise OperationalError(str(cause)) from cause
    except OperationalError as exc:
        return exc


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(caplog):
    # No settling time: the next outage may start at once (tested below).
    outage = outages.Outage("Redis", settle_seconds=0)
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


def test_a_failure_just_after_the_service_answered_again_is_the_outage_that_ended(
    caplog, fake_clock
):
    """A connection the stop closed, found out by the thread that held it just after
    another thread's success, is not a new outage (issue 13, R2); a failure after the
    settling time is."""
    clock = fake_clock(outages)
    outage = outages.Outage("PostgreSQL", settle_seconds=1.0)
    caplog.set_level(logging.WARNING, logger="taskhub.outages")
    stop = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    outage.failed(_django_error(stop), "requests answer 503")
    outage.recovered()
    caplog.clear()

    outage.failed(_django_error(stop), "requests answer 503")
    assert not outage.down
    assert caplog.records == []

    clock.advance(1.1)
    outage.failed(_django_error(stop), "requests answer 503")
    assert outage.down
    assert [r.getMessage()[:34] for r in caplog.records] == ["PostgreSQL unavailable (Operationa"]
    outage.recovered()
    assert caplog.records[-1].getMessage().endswith("; 1 operation(s) failed meanwhile")


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


def test_an_asyncio_timeout_is_not_a_redis_outage():
    # The builtin TimeoutError is asyncio's since Python 3.11: a wait_for of ours running
    # out is not Redis being away.
    async def times_out() -> None:
        await asyncio.wait_for(asyncio.Event().wait(), timeout=0.01)

    with pytest.raises(TimeoutError) as raised:
        asyncio.run(times_out())
    assert not outages.is_redis_outage(raised.value)


@pytest.mark.parametrize(
    "error",
    [
        _django_error(psycopg.OperationalError("connection refused")),  # no SQLSTATE
        _django_error(psycopg_pool.PoolTimeout("couldn't get a connection after 10.00 sec")),
        _django_error(psycopg.errors.AdminShutdown("terminating connection")),
        _django_error(psycopg.errors.CrashShutdown("terminating connection")),
        _django_error(psycopg.errors.CannotConnectNow("the database system is starting up")),
        _django_error(psycopg.errors.TooManyConnections("too many clients already")),
        _django_error(psycopg.errors.ConnectionFailure("connection failure")),
        InterfaceError("connection already closed"),
    ],
)
def test_a_postgresql_that_is_away_is_an_outage_and_a_503(error):
    assert outages.is_database_outage(error)
    assert outages.is_database_retry_later(error)


@pytest.mark.parametrize(
    "error",
    [
        _django_error(psycopg.errors.DeadlockDetected("deadlock detected")),
        _django_error(psycopg.errors.SerializationFailure("could not serialize access")),
    ],
)
def test_a_transaction_that_lost_a_race_is_a_503_but_not_an_outage(error):
    assert outages.is_database_retry_later(error)
    assert not outages.is_database_outage(error)


# Deterministic or the server's own trouble: the same request in 5 s meets them again.
NOT_TO_RETRY = [
    _django_error(psycopg.errors.QueryCanceled("canceling statement due to user request")),
    _django_error(psycopg.errors.LockNotAvailable("could not obtain lock on row")),
    _django_error(psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum")),
    _django_error(psycopg.errors.StatementTooComplex("stack depth limit exceeded")),
    _django_error(psycopg.errors.DiskFull("could not extend file")),
    _django_error(psycopg.errors.OutOfMemory("out of memory")),
]


@pytest.mark.parametrize("error", NOT_TO_RETRY)
def test_other_operational_errors_are_neither_an_outage_nor_a_503(error):
    assert not outages.is_database_outage(error)
    assert not outages.is_database_retry_later(error)


def _refusal_from_this_server(**params: str) -> psycopg.OperationalError:
    """What psycopg raises when the test database's own server turns a connection away."""
    from django.db import connection

    settings_dict = connection.settings_dict
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(
            host=settings_dict["HOST"] or "127.0.0.1",
            port=settings_dict["PORT"] or 5432,
            user=params.get("user", settings_dict["USER"] or "postgres"),
            password=settings_dict["PASSWORD"] or None,
            dbname=params.get("dbname", settings_dict["NAME"]),
            connect_timeout=5,
        )
    return refused.value


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params", [{"dbname": "no_such_database_here"}, {"user": "no_such_role_here"}]
)
def test_a_connection_the_server_refuses_is_a_configuration_error_not_an_outage(params):
    """A wrong database, role or password: PostgreSQL is up and answered FATAL. Waiting
    will not cure it, so it keeps its traceback (a 500) instead of passing for an outage
    (a 503 and one 'PostgreSQL unavailable' line). Such an error has no SQLSTATE."""
    error = _refusal_from_this_server(**params)
    assert error.sqlstate is None
    assert not outages.is_database_outage(error)
    assert not outages.is_database_outage(_django_error(error))
    assert not outages.is_database_retry_later(_django_error(error))


_AT_CONNECT = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(
    "text",
    [
        'FATAL:  password authentication failed for user "app"',
        "fe_sendauth: no password supplied",
        'FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "app", database "app"',
        'FATAL:  role "app" is not permitted to log in',
    ],
)
def test_the_other_refusals_are_configuration_errors_too(text):
    assert not outages.is_database_outage(psycopg.OperationalError(_AT_CONNECT + text))


@pytest.mark.parametrize(
    "text",
    [
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is shutting down",
        "FATAL:  terminating connection due to administrator command",
        "FATAL:  sorry, too many clients already",
        "Connection refused",
        "server closed the connection unexpectedly",
    ],
)
def test_a_server_that_is_away_busy_or_stopping_is_an_outage_without_a_sqlstate(text):
    """The same kind of error (no SQLSTATE) when the server is not there to answer."""
    assert outages.is_database_outage(psycopg.OperationalError(_AT_CONNECT + text))


def test_a_programming_error_is_neither():
    from django.db import ProgrammingError

    assert not outages.is_database_retry_later(ProgrammingError("syntax error"))


@pytest.mark.parametrize("error", NOT_TO_RETRY)
def test_other_operational_errors_are_left_to_the_500_handler_with_their_traceback(error):
    request = RequestFactory().post("/api/tasks/")
    # DRF's handler gives None for what it does not know: DRF raises it on, and Django
    # answers 500 and logs the traceback.
    assert api_errors.api_exception_handler(error, {"request": request}) is None
    middleware = api_errors.DatabaseUnavailableMiddleware(lambda request: None)
    assert middleware.process_exception(request, error) is None
    assert not outages.DATABASE.down


def test_a_lost_race_answers_503_saying_so_without_an_outage(caplog):
    deadlock = _django_error(psycopg.errors.DeadlockDetected("deadlock detected"))
    request = RequestFactory().post("/api/tasks/")

    response = api_errors.DatabaseUnavailableMiddleware(lambda request: None).process_exception(
        request, deadlock
    )

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"concurrent change" in response.content
    assert not outages.DATABASE.down
    assert [r.getMessage() for r in caplog.records if r.name == "taskhub.api_errors"] == [
        "/api/tasks/ answered 503: OperationalError: deadlock detected"
    ]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (_django_error(psycopg.errors.AdminShutdown("terminating")), grpc.StatusCode.UNAVAILABLE),
        (_django_error(psycopg.errors.DeadlockDetected("deadlock")), grpc.StatusCode.UNAVAILABLE),
        (NOT_TO_RETRY[0], grpc.StatusCode.INTERNAL),
        (NOT_TO_RETRY[4], grpc.StatusCode.INTERNAL),
    ],
)
def test_grpc_answers_unavailable_only_for_what_a_retry_can_cure(error, code, caplog):
    assert to_rpc_abort(error).code == code
    if code == grpc.StatusCode.INTERNAL:
        assert any(r.exc_info for r in caplog.records), "logged with its traceback"


# --- Libraries' own lines about a Redis that is away (taskhub/log_filters.py) -------------


def _logged_with_traceback(logger_name: str, exc: BaseException) -> None:
    """What the library does: logger.exception(...) inside its except block."""
    try:
        raise exc
    except BaseException:
        logging.getLogger(logger_name).exception("Unexpected exception in receive task")


def _scheduling_error() -> BaseException:
    """celery beat's error for a tick it could not send: a SchedulingError raised while
    handling kombu's OperationalError (which wraps redis-py's ConnectionError)."""
    from celery.beat import SchedulingError

    try:
        try:
            raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:1.")
        except kombu.exceptions.OperationalError as exc:
            # As celery.beat raises it: the OperationalError only as its __context__.
            raise SchedulingError(  # noqa: B904
                f"Couldn't apply scheduled task dispatch-pending-tasks: {exc}"
            )
    except SchedulingError as exc:
        return exc


@pytest.mark.parametrize(
    ("logger_name", "make_error"),
    [
        # The channel layer's receive loop, once a second while Redis is down (issue 13, R3).
        ("channels_redis.pubsub", lambda: redis.ConnectionError("Error 111 connecting")),
        # beat, for every tick it could not send while the broker is down.
        ("celery.beat", _scheduling_error),
    ],
)
def test_a_librarys_traceback_for_a_redis_outage_becomes_the_one_outage_line(
    logger_name, make_error, caplog
):
    outages.REDIS.forget()
    caplog.set_level(logging.INFO)
    try:
        for _ in range(5):
            _logged_with_traceback(logger_name, make_error())
        assert [r.name for r in caplog.records] == ["taskhub.outages"], caplog.text
        assert "Redis unavailable" in caplog.records[0].getMessage()
        assert all(r.exc_info is None for r in caplog.records)
    finally:
        outages.REDIS.forget()


@pytest.mark.parametrize("logger_name", ["channels_redis.pubsub", "celery.beat"])
def test_a_librarys_other_errors_keep_their_traceback(logger_name, caplog):
    _logged_with_traceback(logger_name, redis.ResponseError("WRONGTYPE"))
    assert [r.name for r in caplog.records] == [logger_name]
    assert caplog.records[0].exc_info is not None


def test_a_message_beat_published_ends_a_redis_outage(caplog):
    """Beat's only sign that the broker answers again: a tick it sent (Celery's
    after_task_publish, sent in the publishing process)."""
    from celery import signals

    outages.REDIS.forget()
    outages.REDIS.failed(redis.ConnectionError("Error 111"), "beat's ticks are not sent")
    caplog.set_level(logging.WARNING, logger="taskhub.outages")
    signals.after_task_publish.send(sender="tasks.dispatch_pending_tasks", body=(), headers={})
    assert not outages.REDIS.down
    assert "Redis available again" in caplog.text


def test_closing_a_channel_whose_connection_is_gone_is_a_broker_error_not_a_crash():
    """kombu's redis channel, closed after its transport let go of the connection (a
    broker lost just after a failed ack), with an unacked message to restore: before
    taskhub/celery.py's guard an AttributeError ended the worker (issue 13, R3)."""
    import kombu
    from django.conf import settings

    import taskhub.celery  # noqa: F401 (the guard)

    connection = kombu.Connection(settings.CELERY_BROKER_URL)
    try:
        channel = connection.channel()  # connects (a PING)
        channel.qos._delivered["tag"] = object()  # an unacked message to restore
        channel._disconnect_pools()
        channel.connection.client = None  # what the lost connection's close left
        connection.maybe_close_channel(channel)  # ignores broker errors, nothing else
    finally:
        connection.release()


def test_a_failed_ack_keeps_its_line_without_the_traceback(caplog):
    """Celery's "Couldn't ack" names the run message (delivered again); the broker's
    loss is the outage, not a traceback each time (issue 13, R3)."""
    logger = logging.getLogger("celery.worker.request")
    try:
        raise redis.ConnectionError("Error while reading from 127.0.0.1:6379 : (104, ...)")
    except redis.ConnectionError:
        logger.critical("Couldn't ack %r, reason:%r", "id-1", "network", exc_info=True)
    assert [r.getMessage() for r in caplog.records] == ["Couldn't ack 'id-1', reason:'network'"]
    assert caplog.records[0].exc_info is None
    assert "Traceback" not in caplog.text

    caplog.clear()
    try:
        raise ValueError("a bug")
    except ValueError:
        logger.critical("Couldn't ack %r", "id-2", exc_info=True)
    assert caplog.records[0].exc_info is not None


def test_a_pools_failed_connection_attempts_become_the_one_outage_line(caplog):
    """psycopg_pool logs every connection attempt that failed, about 60 lines per
    PostgreSQL restart in a web process (issue 13, R2): one outage line instead. A real
    pool against a port nothing listens on."""
    from devserver import testing

    outages.DATABASE.forget()
    caplog.set_level(logging.INFO)
    port = testing.free_port()
    pool = psycopg_pool.ConnectionPool(
        f"host=127.0.0.1 port={port} user=postgres connect_timeout=1",
        min_size=2,
        open=False,
        reconnect_timeout=60,
    )
    try:
        pool.open(wait=False)
        # Two connections to make, each retried after about 1 s: 4 attempts or more.
        testing.wait_until(
            lambda: outages.DATABASE._failures >= 4, timeout=15, message="4 attempts"
        )
        assert [r.name for r in caplog.records] == ["taskhub.outages"], caplog.text
        assert "PostgreSQL unavailable (OperationalError: connection failed" in caplog.text
    finally:
        pool.close(timeout=1)
        outages.DATABASE.forget()


def test_a_pools_other_connection_failures_keep_their_line(caplog):
    """An error that is not an outage (here: not a psycopg error at all) is left alone."""
    caplog.set_level(logging.WARNING)
    logging.getLogger("psycopg.pool").warning(
        "error connecting in %r: %s", "pool-9", ValueError("bad option")
    )
    assert [r.name for r in caplog.records] == ["psycopg.pool"]


HOUSEKEEPING_WHILE_POSTGRESQL_IS_AWAY = """
import django
django.setup()
from notifications import tasks as notifications_tasks
from tasks import tasks as task_tasks
from webhooks import tasks as webhook_tasks

for task, args in [
    (task_tasks.dispatch_pending_tasks, ()),
    (task_tasks.reap_stalled_tasks, ()),
    (task_tasks.prune_idempotency_keys, ()),
    (notifications_tasks.prune_old_events, ()),
    (webhook_tasks.sweep_due_deliveries, ()),
    (webhook_tasks.deliver_webhook, ("6f1c2a9e-0000-4000-8000-000000000000",)),
]:
    print("ran", task.name, "->", task(*args), flush=True)
"""


def test_every_periodic_task_meets_a_postgresql_outage_with_the_one_line():
    """Beat's ticks, the prunes, the webhook sweep and a delivery, run in a process whose
    PostgreSQL is not there (nothing listens on its port): each ends without a traceback,
    and the process logs the outage once. Before, the webhook sweep and the event prune
    raised (issue 13, R2: the sweep's traceback in the worker, once per outage)."""
    from devserver import testing

    closed = testing.test_database_url().rsplit("@", 1)[0] + f"@127.0.0.1:{testing.free_port()}/x"
    run = subprocess.run(
        [sys.executable, "-c", HOUSEKEEPING_WHILE_POSTGRESQL_IS_AWAY],
        env=testing.process_env(DATABASE_URL=closed, DB_POOL_TIMEOUT="1"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=testing.BASE_DIR,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert output.count("ran ") == 6, output[-4000:]
    assert output.count("PostgreSQL unavailable") == 1, output[-4000:]
