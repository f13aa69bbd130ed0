"""publish_many()'s statement: several events in one call, in the order given.

A dispatcher run records up to DISPATCH_BATCH_SIZE task changes in one transaction, one
event each; one statement per event made the round trips and the per-statement work most
of a batch's cost (docs/benchmarks.md, "Publishing in batches: one statement"). This
function takes the events as arrays and publishes each through
notifications_publish_event (migration 0003: the user's counter and the event row), so
the numbering stays in one place. The loop runs in array order, so a user's events are
numbered in the order the caller gave them; rows come back in that order too.
"""

from django.db import migrations

PUBLISH_EVENTS = """
CREATE OR REPLACE FUNCTION notifications_publish_events(
    p_user_ids integer[], p_types varchar[], p_data jsonb[], p_task_ids uuid[],
    p_created_at timestamptz
) RETURNS TABLE (id bigint, seq bigint) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_user_ids, 1), 0) LOOP
        RETURN QUERY SELECT published.id, published.seq FROM notifications_publish_event(
            p_user_ids[i], p_types[i], p_data[i], p_task_ids[i], p_created_at
        ) AS published;
    END LOOP;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("notifications", "0003_publish_function")]

    operations = [
        migrations.RunSQL(
            PUBLISH_EVENTS,
            reverse_sql="DROP FUNCTION IF EXISTS notifications_publish_events("
            "integer[], varchar[], jsonb[], uuid[], timestamptz);",
        ),
    ]
