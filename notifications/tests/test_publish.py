"""publish() on the database: its statement runs on psycopg's own cursor over Django's
connection (notifications/services.py says why), and must still behave as a Django query
does for its callers."""

from __future__ import annotations

import psycopg
import pytest
from django.conf import settings
from django.db import DataError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from notifications import protocol
from notifications.models import Event
from notifications.services import NewEvent, publish, publish_many

pytestmark = pytest.mark.django_db(transaction=True)


def _publish(user, n: int = 0, type: str = protocol.NOTIFICATION_NEW) -> Event:
    return publish(user_id=user.pk, type=type, data={"n": n})


def _other_session_sees(event_id: int) -> bool:
    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or None, dbname=db["NAME"], user=db["USER"],
        password=db["PASSWORD"] or None,
    ) as other:  # fmt: skip
        row = other.execute("SELECT 1 FROM notifications_event WHERE id = %s", [event_id])
        return row.fetchone() is not None


def test_outside_a_transaction_an_event_is_committed_by_itself_with_the_next_number(alice):
    first, second = _publish(alice, 1), _publish(alice, 2)

    assert (first.seq, second.seq) == (1, 2)
    assert _other_session_sees(second.pk)  # no transaction left open behind it
    stored = Event.objects.get(pk=second.pk)
    assert (stored.user_id, stored.seq, stored.data, stored.type) == (
        alice.pk, 2, {"n": 2}, protocol.NOTIFICATION_NEW,
    )  # fmt: skip


def test_inside_a_transaction_an_event_is_the_callers_to_commit_or_roll_back(alice):
    kept = _publish(alice, 1)
    with pytest.raises(RuntimeError), transaction.atomic():
        dropped = _publish(alice, 2)
        raise RuntimeError("the caller fails after publishing")

    assert not Event.objects.filter(pk=dropped.pk).exists()
    # The rolled-back number is handed out again: a user's numbers have no gaps.
    assert _publish(alice, 3).seq == kept.seq + 1


def test_a_database_error_is_djangos_and_breaks_the_callers_transaction(alice):
    with transaction.atomic():
        with pytest.raises(DataError):  # type is varchar(64): psycopg's error, translated
            _publish(alice, type="x" * 65)
        # As for any failed query in an atomic block: Django refuses to go on in it.
        with pytest.raises(TransactionManagementError):
            Event.objects.count()
        transaction.set_rollback(True)

    assert _publish(alice).seq == 1  # the connection is usable again afterwards


def test_the_statement_is_in_the_query_log_as_a_django_query_is(alice):
    with CaptureQueriesContext(connection) as queries:
        _publish(alice)

    assert [q["sql"] for q in queries if "notifications_publish_event" in q["sql"]]


def test_no_statement_stays_prepared_on_the_server_so_pgbouncer_can_hand_out_any(alice):
    # A prepared statement lives in one server session, which PgBouncer in transaction
    # mode does not keep for a client (docs/scaling.md); the function's own plan cache
    # (migration 0003) is what saves the planning instead.
    for n in range(20):
        _publish(alice, n)

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone()[0] == 0


def test_many_events_are_one_statement_numbered_per_user_in_the_order_given(alice, bob):
    _publish(alice, 0)  # alice's numbers go on from her last
    given = [(alice, 1), (bob, 1), (alice, 2), (alice, 3), (bob, 2)]

    with CaptureQueriesContext(connection) as queries:
        events = publish_many(
            [NewEvent(user.pk, protocol.NOTIFICATION_NEW, {"n": n}) for user, n in given]
        )

    assert len(queries) == 1
    assert [(event.user_id, event.seq, event.data["n"]) for event in events] == [
        (alice.pk, 2, 1),
        (bob.pk, 1, 1),
        (alice.pk, 3, 2),
        (alice.pk, 4, 3),
        (bob.pk, 2, 2),
    ]
    stored = {event.pk: (event.user_id, event.seq, event.data) for event in Event.objects.all()}
    assert [stored[event.pk] for event in events] == [
        (event.user_id, event.seq, event.data) for event in events
    ]


def test_many_events_in_a_rolled_back_transaction_leave_nothing_and_no_gap(alice, bob):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish_many([NewEvent(user.pk, protocol.NOTIFICATION_NEW, {}) for user in (alice, bob)])
        raise RuntimeError("the caller fails after publishing")

    assert not Event.objects.exists()
    assert _publish(alice).seq == 1
