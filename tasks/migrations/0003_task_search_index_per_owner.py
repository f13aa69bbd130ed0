"""The search index covers the owner too: GIN on (owner_id, search_vector), btree_gin.

Every search is one user's (search.selectors). With the tsvector alone in the index, a
word that is rare in the user's tasks but common in the table ("deployment" in a sixth of
a million rows) made PostgreSQL read the word's whole posting list and AND it with the
owner's btree: 23-40 ms at 1,000,000 rows where the user has 1,000 (docs/search.md,
"At scale"). With owner_id in the same GIN index the owner's entry is the short list that
the word's list is skipped through. A word common in the user's own tasks still takes the
owner btree and filters, which is the right plan then: it reads that user's rows only.

The index keeps its name, so plans and docs that name task_search_vector_idx still read
right. Built CONCURRENTLY (writers are not locked out), hence a non-atomic migration. A
build that fails half way leaves an INVALID task_owner_search_vector_idx behind (searches
keep the old index meanwhile): drop it with DROP INDEX CONCURRENTLY before migrating again.
"""

from django.contrib.postgres.operations import BtreeGinExtension
from django.db import migrations

# What bench/search_scale.py and anyone bulk-loading rows should re-create after the load.
INDEX_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON tasks_task "
    "USING gin (owner_id, search_vector) WITH (gin_pending_list_limit = 256)"
)
SINGLE_COLUMN_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS task_search_vector_idx ON tasks_task "
    "USING gin (search_vector) WITH (gin_pending_list_limit = 256)"
)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("tasks", "0002_task_search_vector"),
    ]

    # The model does not declare search_vector (0002 says why), so neither index is in the
    # migration state: RunSQL only, one statement each (CONCURRENTLY cannot share one).
    operations = [
        BtreeGinExtension(),
        migrations.RunSQL(
            INDEX_SQL.format(name="task_owner_search_vector_idx"),
            "DROP INDEX CONCURRENTLY IF EXISTS task_owner_search_vector_idx",
        ),
        migrations.RunSQL(
            "DROP INDEX CONCURRENTLY IF EXISTS task_search_vector_idx", SINGLE_COLUMN_SQL
        ),
        migrations.RunSQL(
            "ALTER INDEX task_owner_search_vector_idx RENAME TO task_search_vector_idx",
            "ALTER INDEX task_search_vector_idx RENAME TO task_owner_search_vector_idx",
        ),
    ]
