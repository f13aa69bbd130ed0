"""publish()'s statement as a PL/pgSQL function, and one index fewer per event.

Why a function: publish() runs one statement per event (the user's counter and the event
row). As a plain statement PostgreSQL parses and plans its two-part CTE on every call,
about a third of a batch's time (docs/benchmarks.md, "Publishing: one statement, planned
once"). A prepared statement would save that, but it is a server session's state, which
PgBouncer in transaction mode does not keep (docs/scaling.md). PL/pgSQL caches the plans
of the statements inside a function per server connection by itself, so the call is
planned once per connection and works the same behind PgBouncer.

Why drop notifications_event's user_id index: the unique (user_id, seq) index answers
every lookup by user (its first column) and was a fifth index to update per event.
It is dropped CONCURRENTLY: no lock that waits behind open readers and stops publishing.
"""

from django.conf import settings
from django.db import migrations, models

PUBLISH_EVENT = """
CREATE OR REPLACE FUNCTION notifications_publish_event(
    p_user_id integer, p_type varchar, p_data jsonb, p_task_id uuid, p_created_at timestamptz,
    OUT id bigint, OUT seq bigint
) LANGUAGE plpgsql AS $$
BEGIN
    -- The user's next number; the counter row stays locked until commit, which keeps a
    -- user's events committing in order (notifications.models.EventCounter).
    INSERT INTO notifications_eventcounter AS counter (user_id, last_seq)
    VALUES (p_user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET last_seq = counter.last_seq + 1
    RETURNING counter.last_seq INTO seq;
    INSERT INTO notifications_event (user_id, seq, type, data, task_id, created_at)
    VALUES (p_user_id, seq, p_type, p_data, p_task_id, p_created_at)
    RETURNING notifications_event.id INTO id;
END
$$;
"""

# Django's name for the foreign key's index (its hash of table and column). CONCURRENTLY:
# neither the drop nor the reverse's build holds a lock that stops publishing.
DROP_USER_INDEX = "DROP INDEX CONCURRENTLY IF EXISTS notifications_event_user_id_972ad26d;"
CREATE_USER_INDEX = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_event_user_id_972ad26d "
    "ON notifications_event (user_id);"
)


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("notifications", "0002_notification"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The index only: AlterField alone would also drop and re-add the foreign key,
        # which re-checks every event row under a lock that blocks publishing meanwhile.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=models.deletion.CASCADE,
                        related_name="events",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(DROP_USER_INDEX, reverse_sql=CREATE_USER_INDEX),
            ],
        ),
        migrations.RunSQL(
            PUBLISH_EVENT,
            reverse_sql="DROP FUNCTION IF EXISTS notifications_publish_event("
            "integer, varchar, jsonb, uuid, timestamptz);",
        ),
    ]
