"""A model instance's INSERT as SQL, for a row that must share its statement with another.

Model.save() sends its INSERT as a statement of its own. Where a row and a second write
must commit together (a task and its `task.updated` event: tasks.services.task_create),
a transaction costs two round trips more than the writes (BEGIN and COMMIT; psycopg sends
BEGIN on its own), and on the hottest write of the REST API those were a third of its
database time (docs/benchmarks.md, "REST create: one statement"). One statement is atomic
by itself: the caller puts this INSERT in a WITH clause in front of its other write
(notifications.services.publish's `write=`). PostgreSQL does not promise which of the two
runs first, so nothing may depend on it (no non-deferred foreign key between them).

The SQL is the ORM's own, built as save() builds it: the same fields and values, each
field's pre_save() run, so auto_now and auto_now_add timestamps are set on the instance
before the caller reads them. What save() does that this does not: no pre_save/post_save
signals (nothing in TaskHub listens for them on the models that use this), no RETURNING,
so every value must be known in Python (the primary key included).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model
from django.db.models.sql import InsertQuery


def insert_statement(instance: Model, *, using: str) -> tuple[str, list[Any]]:
    """(sql, params) of the INSERT of `instance`, `%s` placeholders, no RETURNING. Call
    mark_inserted(instance) once the statement has run."""
    meta = instance._meta
    if meta.parents or meta.order_with_respect_to:
        raise TypeError(f"{meta.label}: inherited or ordered models are saved with save()")
    if instance.pk is None:
        raise ValueError(f"{meta.label}: the primary key must be set in Python (no RETURNING)")
    fields = [field for field in meta.local_concrete_fields if not field.generated]
    for field in fields:
        # A database default (db_default left unset) would need RETURNING to be known.
        if hasattr(getattr(instance, field.attname), "resolve_expression"):
            raise ValueError(f"{meta.label}.{field.name}: give its value in Python")
    query = InsertQuery(type(instance))
    query.insert_values(fields, [instance])
    [(sql, params)] = query.get_compiler(using=using).as_sql()
    return sql, list(params)


def mark_inserted(instance: Model, *, using: str) -> None:
    """What save() records on an instance once its row is written."""
    instance._state.adding = False
    instance._state.db = using
