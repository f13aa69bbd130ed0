"""The dispatcher's claim reads two partial indexes instead of one (tasks.models.Task.Meta):
pending tasks due at once by created_at, pending tasks with a run_at by run_at. The old
index made a claim walk every retry still in its backoff before reaching a due task.

Built CONCURRENTLY, outside a transaction: a plain CREATE INDEX would block every write to
the task table for as long as the build reads it. If a build fails (a deadlock, a cancel),
PostgreSQL leaves an INVALID index of that name: drop it (DROP INDEX CONCURRENTLY) and run
the migration again.

The old index (task_pending_idx) stays for one release: during a rolling deploy the
previous release's dispatchers still claim by it. The next release's migration drops it."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0005_retry_policy_idempotency_callback"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(
                condition=models.Q(("run_at__isnull", True), ("status", "pending")),
                fields=["created_at"],
                name="task_pending_now_idx",
            ),
        ),
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(
                condition=models.Q(("run_at__isnull", False), ("status", "pending")),
                fields=["run_at"],
                name="task_pending_later_idx",
            ),
        ),
    ]
