"""The full-text search column of GET /search (search/, docs/search.md).

A STORED generated column, so PostgreSQL keeps it right on every INSERT and UPDATE
whoever writes the row (services, admin, a bulk INSERT ... SELECT), and a GIN index on
it. A generated column needs an IMMUTABLE expression: to_tsvector with an explicit
regconfig literal is immutable, the one-argument form (default_text_search_config) is not.

Layout, each part separated by a filler lexeme '-' placed 50 positions further on:

    title:english(A) title:russian(A) title:simple(A)
    description:english(B) description:russian(B) description:simple(B)

- Title weighs more than description (A = 1.0, B = 0.4 in ts_rank_cd).
- english + russian stem ("running" -> run, "задачи" -> задач): a query is OR-ed over
  the configurations in settings.TASKHUB_SEARCH_CONFIGS, which must be a subset of these
  (settings.TASKHUB_SEARCH_INDEXED_CONFIGS). Another language needs a new migration.
- simple keeps whole words so a prefix query ("deploym:*") finds "deployment" although
  the english stem is "deploy".
- tsvector || tsvector shifts the right side's positions by the left side's largest one,
  so without a gap the last word of one part and the first of the next would be
  adjacent: a phrase "server deploy" would match the title "deploy server" (english
  "deploy server" followed by russian "deploy server"). The filler '-' can never come
  out of a query (the parser treats '-' as a separator), so it only keeps parts apart.

The index keeps GIN's fast update (new entries wait in a pending list that is merged in
bulk) but caps that list at 256 kB instead of 4 MB: every search reads the whole list,
and the planner prices it in, so with a long list after a burst of inserts (or of status
changes, each a new row version) it would rather scan the table. Merged by autovacuum,
or by whichever insert overflows it.

Adding a STORED column rewrites the table under an ACCESS EXCLUSIVE lock: on a large
production table run it in a maintenance window.
"""

from django.db import migrations

CONFIGS = ("english", "russian", "simple")
GAP = "'-:50'::tsvector"


def _parts(column: str, weight: str) -> list[str]:
    return [
        f"setweight(to_tsvector('{config}'::regconfig, coalesce({column}, '')), '{weight}')"
        for config in CONFIGS
    ]


VECTOR = f"\n    || {GAP} || ".join(_parts("title", "A") + _parts("description", "B"))

FORWARD = f"""
ALTER TABLE tasks_task ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (
    {VECTOR}
    ) STORED;
CREATE INDEX task_search_vector_idx ON tasks_task USING gin (search_vector)
    WITH (gin_pending_list_limit = 256);
"""

BACKWARD = """
DROP INDEX IF EXISTS task_search_vector_idx;
ALTER TABLE tasks_task DROP COLUMN IF EXISTS search_vector;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0001_initial"),
    ]

    # The model does not declare the column: Django never writes it (PostgreSQL does) and
    # only search.selectors reads it, so the migration state stays unchanged.
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
