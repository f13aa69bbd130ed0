"""Every write to a Task: create, the status transitions, cancel, retry, dispatch, reap.

REST, the legacy API, gRPC, the admin and the Celery tasks all call these functions, so
the state machine lives here once (tasks.models.ALLOWED_SOURCES) and every transition
writes its event in the same transaction.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, router, transaction
from django.utils import timezone

from notifications import protocol
from notifications.services import NewEvent, notify, publish, publish_ephemeral, publish_many
from taskhub import model_insert
from taskhub.exceptions import ConflictError, UnprocessableError
from taskhub.outages import DATABASE, is_database_outage
from tasks import change_hooks, extensions, queue
from tasks.models import (
    ALLOWED_SOURCES,
    TERMINAL_STATUSES,
    IdempotencyKey,
    StopRequest,
    Task,
    TaskStatus,
)
from tasks.nudge import clear_nudges, nudge_dispatcher
from tasks.processors import registry
from tasks.processors.context import ProcessorContext, StopRequested

logger = logging.getLogger("tasks")

NOT_STARTED = frozenset({TaskStatus.PENDING, TaskStatus.QUEUED})
INTERRUPTED_BY_SHUTDOWN = "interrupted by worker shutdown; retry to run it again"
WORKER_RESTARTED = "the worker running this task was restarted; retry to run it again"
WORKER_LOST = "the worker running this task stopped responding; retry to run it again"
PROCESS_LOST = "the process running this task died ({reason}); retry to run it again"
CANCELLED_ON_REQUEST = "cancelled on request"
REVOKED_FROM_CLI = "revoked from the celery CLI"


# --- Events ------------------------------------------------------------------------------


def task_event_data(task: Task, *, previous_status: str | None) -> dict[str, Any]:
    """The `task.updated` payload (docs/protocol.md, "Server → client types")."""
    data: dict[str, Any] = {
        "task_id": str(task.id),
        "status": task.status,
        "previous_status": previous_status,
        "title": task.title,
        "kind": task.kind,
        "progress": task.progress,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "updated_at": protocol.format_ts(task.updated_at),
    }
    if task.status == TaskStatus.COMPLETED:
        data["result"] = task.result
    elif task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        data["error"] = task.error
    return data


def _record_change(
    task: Task, *, previous_status: str, event_extra: dict[str, Any] | None = None
) -> None:
    """Write a status change's task.updated event in the caller's transaction (owned tasks
    only: a legacy anonymous task has nobody to tell; a create writes its own event,
    task_create). `event_extra` joins the event's data (an automatic retry's `retry`, a
    manual retry's `params_changed`: docs/protocol.md, "Retries")."""
    _log_change(task, previous_status=previous_status)
    # After commit: cached reads of the task die, the change is counted (docs/metrics.md).
    change_hooks.task_changed(task, previous_status=previous_status)
    # Apps built on tasks write what the change owes in this same transaction (webhooks:
    # the outbox row of a terminal status, docs/webhooks.md).
    extensions.task_status_changed(task, previous_status=previous_status)
    if task.owner_id is None:
        return
    data = task_event_data(task, previous_status=previous_status)
    if event_extra:
        data.update(event_extra)
    publish(user_id=task.owner_id, type=protocol.TASK_UPDATED, data=data, task_id=task.id)
    if task.status in TERMINAL_STATUSES:
        # The inbox entry, in the same transaction as the change it reports.
        notify(
            user_id=task.owner_id,
            title=f"Task “{task.title}” {task.get_status_display().lower()}",
            body=task.error if task.status != TaskStatus.COMPLETED else "",
            task_id=task.id,
        )


def _record_changes(tasks: Sequence[Task], *, previous_status: str) -> None:
    """_record_change for tasks that changed together from the same status (a dispatcher
    run), with one statement for all their events (publish_many) and one after-commit
    callback for all their cache versions, instead of one of each per task. Not for a
    change to a terminal status: each of those writes an inbox entry and its event after
    the task's event, and a user's events must keep that order (_record_change)."""
    if any(task.status in TERMINAL_STATUSES for task in tasks):
        raise ValueError("terminal changes are recorded one by one (_record_change)")
    for task in tasks:
        _log_change(task, previous_status=previous_status)
    change_hooks.tasks_changed(tasks, previous_status=previous_status)
    for task in tasks:
        extensions.task_status_changed(task, previous_status=previous_status)
    publish_many(
        [
            NewEvent(
                user_id=task.owner_id,
                type=protocol.TASK_UPDATED,
                data=task_event_data(task, previous_status=previous_status),
                task_id=task.id,
            )
            for task in tasks
            if task.owner_id is not None
        ]
    )


def _log_change(task: Task, *, previous_status: str | None) -> None:
    """The log line of a create (previous_status None) or a status change."""
    logger.info(
        "task %s status %s -> %s (attempt %s)",
        task.id,
        previous_status or "-",
        task.status,
        task.attempts,
    )


# --- Create ------------------------------------------------------------------------------


def task_validate_run(
    *,
    kind: str,
    params: Any,
    timeout: int,
    max_attempts: int | None = None,
    retry_backoff: int | None = None,
) -> None:
    """ValidationError({field: [message]}) unless a task may run with these (every surface
    that creates or edits a task calls this, so all refuse the same input the same way).
    The retry policy is checked when given (None: the kind's or the settings' default)."""
    errors: dict[str, list[str]] = {}
    if kind not in registry.available_kinds():
        known = ", ".join(sorted(registry.available_kinds()))
        errors["kind"] = [f"Unknown kind {kind!r}; known kinds: {known}."]
    if not isinstance(params, dict):
        errors["params"] = ["Must be a JSON object."]
    elif len(json.dumps(params)) > settings.TASKHUB_TASK_MAX_PARAMS_BYTES:
        errors["params"] = [
            f"Must be at most {settings.TASKHUB_TASK_MAX_PARAMS_BYTES} bytes of JSON."
        ]
    if not 1 <= timeout <= settings.TASKHUB_TASK_MAX_TIMEOUT:
        errors["timeout"] = [f"Must be between 1 and {settings.TASKHUB_TASK_MAX_TIMEOUT} seconds."]
    if max_attempts is not None and not 1 <= max_attempts <= settings.TASKHUB_TASK_MAX_ATTEMPTS:
        errors["max_attempts"] = [
            f"Must be between 1 and {settings.TASKHUB_TASK_MAX_ATTEMPTS} "
            "(runs before a failure is final; 1: no automatic retry)."
        ]
    cap = settings.TASKHUB_TASK_MAX_RETRY_BACKOFF
    if retry_backoff is not None and not 0 <= retry_backoff <= cap:
        errors["retry_backoff"] = [f"Must be between 0 and {cap} seconds."]
    if errors:
        raise ValidationError(errors)


def task_retry_policy(
    *, kind: str, max_attempts: int | None, retry_backoff: int | None
) -> tuple[int, int]:
    """(max_attempts, retry_backoff) of a new task: the request's, else what the kind's
    processor declares (registry.kind_retry_defaults, brought within the limits so an
    operator's lower TASK_MAX_ATTEMPTS never makes a kind uncreatable), else the settings'."""
    kind_attempts, kind_backoff = registry.kind_retry_defaults(kind)
    if max_attempts is None:
        max_attempts = (
            settings.TASKHUB_TASK_DEFAULT_MAX_ATTEMPTS if kind_attempts is None else kind_attempts
        )
        max_attempts = max(1, min(max_attempts, settings.TASKHUB_TASK_MAX_ATTEMPTS))
    if retry_backoff is None:
        retry_backoff = (
            settings.TASKHUB_TASK_DEFAULT_RETRY_BACKOFF if kind_backoff is None else kind_backoff
        )
        retry_backoff = max(0, min(retry_backoff, settings.TASKHUB_TASK_MAX_RETRY_BACKOFF))
    return max_attempts, retry_backoff


def task_build(
    *,
    owner: AbstractBaseUser | None,
    title: str,
    description: str = "",
    kind: str = "simulate",
    params: dict[str, Any] | None = None,
    timeout: int | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    retry_backoff: int | None = None,
    callback_url: str = "",
) -> Task:
    """The unsaved pending task a create writes, its input checked and its defaults filled
    in (ValidationError for bad input): task_create's first half, with no I/O, so that a
    surface that writes the row another way builds the same one (bench/proto_http.py;
    docs/benchmarks.md, "The lean HTTP path: the design tried for REST create and search")."""
    params = {} if params is None else params
    timeout = settings.TASKHUB_TASK_DEFAULT_TIMEOUT if timeout is None else timeout
    task_validate_run(
        kind=kind,
        params=params,
        timeout=timeout,
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
    )
    extensions.callback_url_validate(callback_url)
    max_attempts, retry_backoff = task_retry_policy(
        kind=kind, max_attempts=max_attempts, retry_backoff=retry_backoff
    )
    return Task(
        owner=owner,
        title=title,
        description=description,
        kind=kind,
        params=params,
        timeout=timeout,
        run_at=run_at,
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
        callback_url=callback_url,
    )


def task_create(
    *,
    owner: AbstractBaseUser | None,
    title: str,
    description: str = "",
    kind: str = "simulate",
    params: dict[str, Any] | None = None,
    timeout: int | None = None,
    run_at: datetime | None = None,
    max_attempts: int | None = None,
    retry_backoff: int | None = None,
    callback_url: str = "",
) -> Task:
    """Insert a pending task; the dispatcher queues it (nudged right after commit).
    `callback_url`: POSTed to, signed, when the task ends (docs/webhooks.md); "" for the
    owner's default, if any.
    `max_attempts`/`retry_backoff` None: the kind's default, else the settings'."""
    task = task_build(
        owner=owner,
        title=title,
        description=description,
        kind=kind,
        params=params,
        timeout=timeout,
        run_at=run_at,
        max_attempts=max_attempts,
        retry_backoff=retry_backoff,
        callback_url=callback_url,
    )
    using = DEFAULT_DB_ALIAS  # publish() writes on the default database, so the row does too
    if task.owner_id is None:
        # A legacy anonymous task: nobody to tell, the row is the whole write.
        task.save(force_insert=True, using=using)
        _created(task)
    else:
        # The row and its task.updated event in one statement: atomic without a
        # transaction's BEGIN and COMMIT round trips (taskhub/model_insert.py says why).
        write = model_insert.insert_statement(task, using=using)  # sets the timestamps
        publish(
            user_id=task.owner_id,
            type=protocol.TASK_UPDATED,
            data=task_event_data(task, previous_status=None),
            task_id=task.id,
            write=write,
            after_write=lambda: _created(task),
        )
        model_insert.mark_inserted(task, using=using)  # as save() does
    transaction.on_commit(nudge_dispatcher, robust=True)
    return task


def _created(task: Task) -> None:
    """A create's row is written (committed, or in the caller's transaction): what follows
    it, before its event's push. Status listeners (tasks.extensions) are not called: a
    create is no status change, and its write is one statement with no room for theirs."""
    _log_change(task, previous_status=None)
    # After commit (at once outside a transaction): the owner's cached lists die, the
    # create is counted (docs/metrics.md).
    change_hooks.task_changed(task, previous_status=None)


# Fields an operator may edit after create: what a task says at any time, how it runs only
# while nothing has run it yet.
DESCRIPTIVE_FIELDS = frozenset({"title", "description"})
RUN_FIELDS = frozenset({"kind", "params", "timeout", "run_at"})


def task_update_details(*, task_id: UUID | str, **changes: Any) -> Task:
    """Edit a task's title/description (any time) or kind/params/timeout/run_at (only while
    pending), as visible as any other change: a task.updated event and fresh cached reads.

    ValidationError for bad values, ConflictError for run fields of a task that has left
    pending (its run message may already carry the old ones).
    """
    unknown = set(changes) - DESCRIPTIVE_FIELDS - RUN_FIELDS
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        changed = {field for field, value in changes.items() if getattr(task, field) != value}
        if not changed:
            return task
        if changed & RUN_FIELDS and task.status != TaskStatus.PENDING:
            fields = ", ".join(sorted(changed & RUN_FIELDS))
            raise ConflictError(f"Task is {task.status}; {fields} can change only while pending.")
        for field in changed:
            setattr(task, field, changes[field])
        if changed & RUN_FIELDS:
            task_validate_run(kind=task.kind, params=task.params, timeout=task.timeout)
        task.full_clean(validate_unique=False, validate_constraints=False)
        task.save(update_fields=[*changed, "updated_at"])
        logger.info("task %s details edited: %s", task.pk, ", ".join(sorted(changed)))
        # Not _record_change: the status did not change, so no inbox entry and no metric;
        # only the event (the page shows the new title) and fresh cached reads.
        change_hooks.task_details_changed(task_id=task.pk, owner_id=task.owner_id)
        if task.owner_id is not None:
            publish(
                user_id=task.owner_id,
                type=protocol.TASK_UPDATED,
                data=task_event_data(task, previous_status=task.status),
                task_id=task.id,
            )
    if "run_at" in changed:
        transaction.on_commit(nudge_dispatcher, robust=True)
    return task


# --- Transitions -------------------------------------------------------------------------


def task_transition(
    *,
    task_id: UUID | str,
    to: str,
    only_from: frozenset[str] | None = None,
    attempt: int | None = None,
    **changes: Any,
) -> Task | None:
    """Move a task to `to` if its current status allows it; return None if not.

    `only_from` narrows the allowed sources further for one caller (a cancel request must
    not end a running task at once: the runner does that when the processor stops).
    `attempt`, if given, must be the task's current one: a run's outcome is its attempt's,
    never a later retry's.

    The row lock makes the check and the write one atomic step: of two racing
    transitions (a cancel and a start, say) the second waits, sees the new status and
    gives up, so the loser is a no-op rather than a corrupt state.
    """
    sources = ALLOWED_SOURCES[to] if only_from is None else ALLOWED_SOURCES[to] & only_from
    if _plain_values(changes):
        with transaction.atomic():
            moved = _move_in_one_statement(task_id, to, sources, attempt, changes)
            if moved is not None:
                _record_change(moved, previous_status=moved.previous_status)
        return moved
    with transaction.atomic():
        rows = Task.objects.select_for_update().filter(pk=task_id, status__in=sources)
        if attempt is not None:
            rows = rows.filter(attempts=attempt)
        task = rows.first()
        if task is None:
            return None
        previous_status = task.status
        task.status = to
        for field, value in changes.items():
            # A callable derives the value from the locked row (retry's attempts + 1), so a
            # caller holding a stale instance cannot write a stale value.
            setattr(task, field, value(task) if callable(value) else value)
        task.save(update_fields=["status", "updated_at", *changes])
        _record_change(task, previous_status=previous_status)
    return task


def _plain_values(changes: dict[str, Any]) -> bool:
    """Changes the one-statement move can write: values, not a callable of the locked row
    or an expression, and not `updated_at`, which it stamps itself."""
    return "updated_at" not in changes and not any(
        callable(value) or hasattr(value, "resolve_expression") for value in changes.values()
    )


@functools.cache
def _returned_row() -> tuple[str, list[str], list[tuple[int, Any, Any]]]:
    """What the move returns, computed once: its columns, the model's attnames in that
    order, and each field's converters from the database value (JSONField's json.loads),
    which a queryset would apply."""
    fields = Task._meta.concrete_fields
    columns = ", ".join(f'moved."{field.column}"' for field in fields)
    converters = [
        (index, converter, field.get_col(Task._meta.db_table))
        for index, field in enumerate(fields)
        for converter in field.get_db_converters(connection)
    ]
    return columns, [field.attname for field in fields], converters


def _move_in_one_statement(
    task_id: UUID | str,
    to: str,
    sources: frozenset[str],
    attempt: int | None,
    changes: dict[str, Any],
) -> Task | None:
    """task_transition's lock, check and write as one statement: the row locked if its
    status (and attempt) allow the move, updated, and returned with the status it had.
    The same step as select_for_update() + save(), in one round trip and without the ORM
    building two queries: a task's run is two transitions, and they were the larger part
    of a worker's CPU per task (docs/benchmarks.md, "Drain: one statement per
    transition"). A concurrent transition holding the lock makes this one wait and then
    check the status it left, as select_for_update() does.

    `updated_at` is this call's clock, but always after the row's own (by a microsecond at
    least): the clock is read before the statement may wait for the lock, and a write that
    got the row first (a cancel request, say) must not look as new as this one to a page
    that keeps the newest state it saw (save() read the clock after the lock)."""
    meta = Task._meta
    db = connections[router.db_for_write(Task)]
    fields = [meta.get_field(name) for name in ("status", *changes)]
    values = [to, *changes.values()]
    updated_at = meta.get_field("updated_at").column
    assignments = ", ".join(
        [
            *(f'"{field.column}" = %s' for field in fields),
            f'"{updated_at}" = GREATEST(%s, moved."{updated_at}" + interval \'1 microsecond\')',
        ]
    )
    params: list[Any] = [
        *(field.get_db_prep_save(value, db) for field, value in zip(fields, values, strict=True)),
        timezone.now(),
    ]
    pk = meta.pk.column
    status = meta.get_field("status").column
    check = f'"{pk}" = %s AND "{status}" = ANY(%s)'
    # to_python: a malformed id is a ValidationError, as the ORM's filter(pk=...) made it.
    check_params: list[Any] = [meta.pk.to_python(task_id), list(sources)]
    if attempt is not None:
        check += f' AND "{meta.get_field("attempts").column}" = %s'
        check_params.append(attempt)
    table = meta.db_table
    columns, attnames, converters = _returned_row()
    sql = (
        f'WITH locked AS (SELECT "{pk}", "{status}" FROM "{table}" '  # noqa: S608 (_meta names only)
        f"WHERE {check} FOR UPDATE) "
        f'UPDATE "{table}" AS moved SET {assignments} FROM locked '
        f'WHERE moved."{pk}" = locked."{pk}" '
        f'RETURNING {columns}, locked."{status}"'
    )
    # Django's cursor (its query log, metrics and error translation) but no queryset: a
    # RawQuerySet's column mapping was a sixth of a worker's CPU per task.
    with db.cursor() as cursor:
        cursor.execute(sql, [*check_params, *params])
        row = cursor.fetchone()
    if row is None:
        return None
    *values, previous_status = row
    for index, converter, column in converters:
        values[index] = converter(values[index], column, db)
    task = Task.from_db(db.alias, attnames, values)
    task.previous_status = previous_status
    return task


def task_start(
    *, task_id: UUID | str, worker: str, started_at: datetime | None = None
) -> Task | None:
    """queued -> in_progress, claimed by `worker`. None if someone else got there first.
    The previous attempt's error (kept while an automatic retry waits) is cleared: this
    attempt's outcome, or a cancel of it, says its own."""
    return task_transition(
        task_id=task_id,
        to=TaskStatus.IN_PROGRESS,
        started_at=started_at or timezone.now(),
        worker=worker,
        progress=0,
        error="",
        stop_requested=StopRequest.NONE,
    )


def task_complete(*, task_id: UUID | str, result: Any, attempt: int | None = None) -> Task | None:
    """-> completed. The error is cleared: a revoke that came too late to stop the run left
    its reason there for a cancel that never happened (task_revoke)."""
    return task_transition(
        task_id=task_id,
        to=TaskStatus.COMPLETED,
        attempt=attempt,
        result=result,
        error="",
        progress=100,
        finished_at=timezone.now(),
    )


# The automatic retry's jitter: each wait is the exponential's value times a factor drawn
# uniformly from [1 - RETRY_JITTER, 1 + RETRY_JITTER] (so tasks that failed together do not
# all come back in the same second), never past TASK_MAX_RETRY_BACKOFF.
RETRY_JITTER = 0.2
_retry_random = random.Random()  # noqa: S311 (jitter, not a secret)


def task_retry_delay(
    *, retry_backoff: int, failed_attempt: int, rand: random.Random | None = None
) -> float:
    """Seconds to wait after attempt `failed_attempt` (1, 2, ...) failed:
    min(cap, retry_backoff * 2**(failed_attempt - 1)) * uniform(0.8, 1.2), at most the cap
    (settings.TASKHUB_TASK_MAX_RETRY_BACKOFF). `rand` is for tests."""
    cap = settings.TASKHUB_TASK_MAX_RETRY_BACKOFF
    exponential = min(cap, retry_backoff * 2 ** max(0, failed_attempt - 1))
    factor = (rand or _retry_random).uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
    return min(cap, exponential * factor)


def task_fail(*, task_id: UUID | str, error: str, attempt: int | None = None) -> Task | None:
    """A run failed (its processor's error, its timeout, its process or worker lost or
    stopped: every failure ends here). With attempts left (attempts < max_attempts) and no
    cancel asked, the task goes straight back to pending for its next attempt, not before
    run_at = now + task_retry_delay(); otherwise -> failed, final. One locked step, so a
    cancel that lands meanwhile is seen (docs/tasks.md, "Retries"). Only from in_progress
    and, if `attempt` is given, only that attempt; None otherwise."""
    error = error[:5000]
    with transaction.atomic():
        rows = Task.objects.select_for_update().filter(
            pk=task_id, status__in=ALLOWED_SOURCES[TaskStatus.FAILED]
        )
        if attempt is not None:
            rows = rows.filter(attempts=attempt)
        task = rows.first()
        if task is None:
            return None
        if task.attempts < task.max_attempts and task.stop_requested != StopRequest.CANCEL:
            return _task_retry_automatically(task, error=error)
        return task_transition(
            task_id=task_id,
            to=TaskStatus.FAILED,
            attempt=task.attempts,
            error=error,
            finished_at=timezone.now(),
        )


def _task_retry_automatically(task: Task, *, error: str) -> Task:
    """in_progress -> pending, attempts + 1, run_at pushed out by the backoff, the failed
    attempt's error kept as the task's last error. Call while holding the row's lock (from
    task_fail). Not terminal: no inbox entry, no webhook; the dispatcher leaves the row
    alone until run_at (it honours run_at; no nudge is sent: nothing is due yet)."""
    now = timezone.now()
    delay = task_retry_delay(retry_backoff=task.retry_backoff, failed_attempt=task.attempts)
    previous_status = task.status
    task.status = TaskStatus.PENDING
    task.attempts += 1
    task.run_at = now + timedelta(seconds=delay)
    task.error = error
    task.progress = 0
    task.result = None
    task.stop_requested = StopRequest.NONE
    task.worker = ""
    task.queued_at = task.started_at = task.finished_at = None
    task.save(
        update_fields=[
            "status",
            "attempts",
            "run_at",
            "error",
            "progress",
            "result",
            "stop_requested",
            "worker",
            "queued_at",
            "started_at",
            "finished_at",
            "updated_at",
        ]
    )
    logger.info(
        "task %s failed attempt %s of %s (%s); retrying in %.1f s",
        task.pk,
        task.attempts - 1,
        task.max_attempts,
        error,
        delay,
    )
    _record_change(
        task,
        previous_status=previous_status,
        event_extra={
            "retry": {
                "in_seconds": round(delay, 1),
                "attempt": task.attempts,
                "of": task.max_attempts,
                "error": error,
                "run_at": protocol.format_ts(task.run_at),
            }
        },
    )
    return task


def task_mark_cancelled(
    *,
    task_id: UUID | str,
    only_from: frozenset[str] | None = None,
    reason: str = "",
    attempt: int | None = None,
) -> Task | None:
    """-> cancelled, saying why: `reason`, else the one a stop request left on the row
    (task_revoke's), else "cancelled on request"."""
    return task_transition(
        task_id=task_id,
        to=TaskStatus.CANCELLED,
        only_from=only_from,
        attempt=attempt,
        # The row's error is a reason only under a cancel request (task_revoke leaves one
        # there); otherwise it is a failed attempt's, kept while its retry waited.
        error=lambda locked: (
            reason
            or (locked.error if locked.stop_requested == StopRequest.CANCEL else "")
            or CANCELLED_ON_REQUEST
        ),
        finished_at=timezone.now(),
    )


def task_end_unfinished_run(
    *, task_id: UUID | str, error: str, attempt: int | None = None
) -> Task | None:
    """A run ended without an outcome of its own (its process was ended by a signal or
    died, its worker stopped or was restarted, it went past its deadline): cancelled if a
    cancel was asked for (TaskHub's cancel, a revoke from the celery CLI), else failed with
    `error`, retryable. The one place that rule lives: the runner, the worker's shutdown
    and restart, the lost-process record and the reaper all end runs here.

    The check and the write are one locked step, so a cancel request that lands between
    them is not recorded as a failure. Only while in_progress and, if `attempt` is given,
    only that attempt (a retry already running is left alone); None otherwise.
    """
    with transaction.atomic():
        current = (
            Task.objects.select_for_update()
            .filter(pk=task_id, status=TaskStatus.IN_PROGRESS)
            .values_list("attempts", "stop_requested")
            .first()
        )
        if current is None or (attempt is not None and attempt != current[0]):
            return None
        attempts, stop_requested = current
        if stop_requested == StopRequest.CANCEL:
            return task_mark_cancelled(task_id=task_id, attempt=attempts)
        return task_fail(task_id=task_id, error=error, attempt=attempts)


def task_report_progress(*, task: Task, progress: int) -> None:
    """Store progress (0-100) of a running task and push an ephemeral task.progress."""
    progress = max(0, min(100, int(progress)))
    now = timezone.now()
    updated = Task.objects.filter(pk=task.pk, status=TaskStatus.IN_PROGRESS).update(
        progress=progress, updated_at=now
    )
    if updated:
        change_hooks.task_progressed(task_id=task.pk, owner_id=task.owner_id)
    if updated and task.owner_id is not None:
        publish_ephemeral(
            user_id=task.owner_id,
            type=protocol.TASK_PROGRESS,
            data={"task_id": str(task.pk), "progress": progress, "status": task.status},
        )


# --- Running -----------------------------------------------------------------------------


class ResultRefused(Exception):
    """A processor's result that cannot be stored (not JSON, or too big)."""


def task_result_check(result: Any) -> None:
    """ResultRefused unless `result` can be stored as the task's result: strict JSON
    (PostgreSQL's jsonb takes no NaN or Infinity) within TASK_MAX_RESULT_BYTES."""
    try:
        encoded = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultRefused(f"result is not JSON: {exc}") from None
    limit = settings.TASKHUB_TASK_MAX_RESULT_BYTES
    if len(encoded.encode()) > limit:
        raise ResultRefused(
            f"result is {len(encoded.encode())} bytes of JSON; at most {limit} are kept"
        )


def _reconnect_if_broken() -> None:
    """Drop the thread's database connection if an error left it unusable, so the next
    query opens a fresh one. Only that: Django's close_if_unusable_or_obsolete() would also
    close a healthy connection (obsolete at CONN_MAX_AGE=0, or inside a caller's atomic
    block, where a new one cannot be opened)."""
    if connection.connection is None or connection.in_atomic_block:
        return
    if connection.errors_occurred and not connection.is_usable():
        connection.close()


def _ended_by_signal(exc: BaseException) -> bool:
    """A Celery pool process turns the signal that ends it (SIGTERM from a cold shutdown
    or `celery control terminate`) into SystemExit(-(256 - signum)) (billiard's
    reset_signals), so that the run's `finally` blocks and this handler still run."""
    return isinstance(exc, SystemExit) and isinstance(exc.code, int) and -256 < exc.code < -192


def _record_stopped_run(task_id: UUID | str, attempt: int) -> None:
    """The process is being stopped mid-run (a signal, Ctrl-C): record the run if the
    database lets us, never raise instead of the stop. A database error raised here would
    replace the SystemExit, and the pool process would go on to its next task instead of
    ending; the worker's restart or the reaper records what this could not."""
    try:
        task_end_unfinished_run(task_id=task_id, attempt=attempt, error=INTERRUPTED_BY_SHUTDOWN)
    except Exception as exc:
        if is_database_outage(exc):
            DATABASE.failed(exc, "stopped runs are left to the worker's restart or the reaper")
        else:
            logger.exception("task %s: recording its stopped run failed", task_id)


# The outcome write's retry while PostgreSQL is down: the wait doubles up to this cap.
OUTCOME_RETRY_MAX_DELAY = 5.0


def _until_recorded(
    record: Callable[..., Task | None],
    *,
    meanwhile: str = "finished tasks wait to record their outcome",
    **fields: Any,
) -> Task | None:
    """Write a run's outcome (`record(**fields)`: task_complete, task_fail, ...), retrying
    while the database is unreachable (taskhub.outages.is_database_outage), until it lands:
    a task that ran is recorded as it ended, not left in_progress for the reaper to call
    "failed" minutes later (issue 13, R2). The write is one transaction, a transition from
    in_progress of the run's own attempt (`fields` name it), so a retry after a commit whose
    answer was lost finds nothing to do (None), never a second event, and a retry that
    outlives the run's record by someone else (the lost-process record, the reaper) can
    never end the task's next attempt.

    Any other error is raised at once: PostgreSQL is up and refused this write (a deadlock,
    a cancelled statement, a full disk), and trying again until the hard time limit would
    only hide it. Bounded by the run's hard time limit (the soft one, if it fires
    meanwhile, is ignored: the processor is done); the reaper remains the last resort.
    """
    delay = 0.25
    while True:
        try:
            return record(**fields)
        except SoftTimeLimitExceeded:
            pass
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            if delay == 0.25:
                # One line per task, not per try: which tasks wait. The outage itself may
                # have been reported already (by the pool, another task) and says nothing
                # more (taskhub.outages).
                task_id = fields.get("task_id")
                logger.info("task %s: %s until PostgreSQL is back", task_id, meanwhile)
            DATABASE.failed(exc, meanwhile)
        # The failed transaction's atomic block has exited: drop the broken connection so
        # the next try opens (or takes from the pool) a fresh one.
        connection.close()
        time.sleep(delay)
        delay = min(delay * 2, OUTCOME_RETRY_MAX_DELAY)


def _claim(*, task_id: UUID | str, worker: str) -> Task | None:
    """task_start, waiting for PostgreSQL if it is away (_until_recorded): a run message
    that arrives during a restart runs once it is back, instead of raising (a traceback)
    and leaving its task queued until the dispatcher re-sends the message after
    QUEUED_RESEND_AFTER (issue 13, R2). A retry whose earlier try committed but lost its
    answer finds the task in_progress under this claim's own worker and start time: that
    is this claim, not someone else's."""
    started_at = timezone.now()
    tries = 0

    def claim(**fields: Any) -> Task | None:
        nonlocal tries
        tries += 1
        task = task_start(**fields)
        if task is None and tries > 1:
            # Only after a retry: a duplicate message's one try costs no second query.
            task = Task.objects.filter(
                pk=task_id, status=TaskStatus.IN_PROGRESS, worker=worker, started_at=started_at
            ).first()
        return task

    # The lookup is part of the retried write: an outage that outlasts the claim's commit
    # meets it too, and waits like the claim instead of raising.
    return _until_recorded(
        claim,
        meanwhile="run messages wait to claim their task",
        task_id=task_id,
        worker=worker,
        started_at=started_at,
    )


def task_run(*, task_id: UUID | str, worker: str) -> Task | None:
    """Run one queued task to its end: claim it (queued -> in_progress), run its processor,
    record how it ended (completed | failed | cancelled). None if it was not queued any
    more (a duplicate message: the claim is the guard).

    Whatever happens between the claim and the outcome ends the task at once, so nothing
    is left in_progress for the reaper: a processor's exception (SystemExit included), a
    result that cannot be stored, the soft time limit, a stop request. KeyboardInterrupt
    (the worker being stopped from a terminal) is recorded as an interrupted run and then
    allowed to stop the worker.
    """
    task = _claim(task_id=task_id, worker=worker)
    if task is None:
        return None
    attempt = task.attempts
    try:
        processor = registry.get_processor(task.kind)
        context = ProcessorContext(
            task, report_progress=lambda value: task_report_progress(task=task, progress=value)
        )
        result = processor(context)
        task_result_check(result)
    except SoftTimeLimitExceeded:
        # The limit can fire in the middle of a query: go on with a fresh connection.
        connection.close()
        logger.warning("task %s timed out after %s s", task_id, task.timeout)
        return _until_recorded(
            task_fail, task_id=task_id, attempt=attempt, error=f"timed out after {task.timeout} s"
        )
    except StopRequested as stop:
        _reconnect_if_broken()
        if stop.reason == StopRequest.SHUTDOWN:
            # A cancel asked after the shutdown's stop request still wins.
            return task_end_unfinished_run(
                task_id=task_id, attempt=attempt, error=INTERRUPTED_BY_SHUTDOWN
            )
        return task_mark_cancelled(task_id=task_id, attempt=attempt)
    except ResultRefused as refused:
        _reconnect_if_broken()
        logger.info("task %s failed: %s", task_id, refused)
        return _until_recorded(task_fail, task_id=task_id, attempt=attempt, error=str(refused))
    except KeyboardInterrupt:
        _reconnect_if_broken()
        _record_stopped_run(task_id, attempt)
        raise
    except BaseException as exc:  # a processor's SystemExit fails its task like any error
        # The processor's own query may have broken the connection (a PostgreSQL restart,
        # a killed session): recording the failure on it would raise again and leave the
        # task to the reaper.
        _reconnect_if_broken()
        if _ended_by_signal(exc):
            _record_stopped_run(task_id, attempt)
            raise
        logger.info("task %s failed: %s: %s", task_id, type(exc).__name__, exc)
        return _until_recorded(
            task_fail, task_id=task_id, attempt=attempt, error=f"{type(exc).__name__}: {exc}"
        )
    try:
        return _until_recorded(task_complete, task_id=task_id, attempt=attempt, result=result)
    except Exception as exc:
        # The result was checked and the database is up (an outage is waited out above), so
        # it refused the write: say so now rather than leave the task to the reaper.
        logger.exception("task %s: recording its result failed", task_id)
        connection.close()
        return _until_recorded(
            task_fail,
            task_id=task_id,
            attempt=attempt,
            error=f"recording the result failed: {exc}",
        )


# --- Cancel and retry --------------------------------------------------------------------


def task_cancel(*, task: Task) -> Task:
    """pending/queued -> cancelled at once; in_progress -> the processor is asked to stop
    at its next checkpoint and the runner records `cancelled`. A finished task is a
    conflict."""
    # The task may move on between our reads (queued -> in_progress, say); each step below
    # is atomic on its own, so looking again is enough. Two looks cover any one move.
    for _ in range(3):
        cancelled = task_mark_cancelled(task_id=task.pk, only_from=NOT_STARTED)
        if cancelled is not None:
            return cancelled
        requested = Task.objects.filter(pk=task.pk, status=TaskStatus.IN_PROGRESS).update(
            stop_requested=StopRequest.CANCEL, updated_at=timezone.now()
        )
        task.refresh_from_db()
        if requested:
            logger.info("task %s cancel requested while in_progress", task.pk)
            transaction.on_commit(
                lambda: queue.revoke_run_message(task.pk, task.attempts), robust=True
            )
            return task
        if task.status in TERMINAL_STATUSES:
            raise ConflictError(
                f"Task is already {task.status}; only an unfinished task can be cancelled."
            )
    raise ConflictError("Task is changing state too fast to cancel; try again.")


def task_revoke(
    *, task_id: UUID | str, attempt: int | None, terminated: bool = False
) -> tuple[Task | None, str]:
    """A revoke from outside TaskHub (the celery CLI, tasks/worker_signals.py) recorded as
    a cancel, so TaskHub's state, not Celery's in-memory revoke list, keeps the task from
    running after any worker restart. Returns the task (None if unknown) and what was done,
    in words for the CLI's reply.

    `attempt` (from the Celery id `<task id>:<attempt>`; None for a bare task id) must be
    the task's current one: a revoke of attempt 1 never cancels its retry. Not started:
    cancelled now. Running: `terminated` (the worker killed the process running it) is
    cancelled now; otherwise the processor is asked to stop at its next checkpoint, with the
    reason left on the row for the runner's cancel. Idempotent: every worker receives the
    broadcast and calls this.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=task_id).first()
        if task is None:
            return None, "not a TaskHub task"
        if attempt is not None and attempt != task.attempts:
            return task, f"attempt {attempt} is over (the task is at attempt {task.attempts})"
        if task.status in NOT_STARTED or (terminated and task.status == TaskStatus.IN_PROGRESS):
            task_mark_cancelled(task_id=task.pk, reason=REVOKED_FROM_CLI)
            task.refresh_from_db()
            return task, "cancelled"
        if task.status == TaskStatus.IN_PROGRESS:
            if task.stop_requested != StopRequest.CANCEL:
                task.stop_requested = StopRequest.CANCEL
                task.error = REVOKED_FROM_CLI
                task.save(update_fields=["stop_requested", "error", "updated_at"])
                logger.warning("task %s %s: cancel requested", task.pk, REVOKED_FROM_CLI)
            return task, "cancel requested; it stops at its next checkpoint"
        return task, f"already {task.status}"


# What a manual retry may start from (the automatic one's in_progress is task_fail's).
MANUALLY_RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})


def task_retry(*, task: Task, params: dict[str, Any] | None = None) -> Task:
    """failed/cancelled -> pending with attempts + 1 and the previous outcome cleared: one
    more attempt, now (a run_at still ahead, an automatic retry's that a cancel stopped,
    is dropped). `params`, if given, replace the task's ("edit and re-run"), checked like a
    create's (ValidationError); the event says so (`params_changed`, and with a change the
    new `params` and `previous_params`), so the task's history shows what each attempt ran
    with. A retry is one attempt more, not a new max_attempts budget: automatic retries
    apply only while attempts < max_attempts."""
    if params is not None:
        task_validate_run(kind=task.kind, params=params, timeout=task.timeout)
    with transaction.atomic():
        locked = (
            Task.objects.select_for_update()
            .filter(pk=task.pk, status__in=ALLOWED_SOURCES[TaskStatus.PENDING] & MANUALLY_RETRYABLE)
            .first()
        )
        if locked is None:
            task.refresh_from_db()
            raise ConflictError(
                f"Task is {task.status}; only a failed or cancelled task can be retried."
            )
        now = timezone.now()
        previous_status, previous_params = locked.status, locked.params
        params_changed = params is not None and params != previous_params
        locked.status = TaskStatus.PENDING
        locked.attempts += 1
        if params_changed:
            locked.params = params
        if locked.run_at is not None and locked.run_at > now:
            locked.run_at = None
        locked.progress = 0
        locked.result = None
        locked.error = ""
        locked.stop_requested = StopRequest.NONE
        locked.worker = ""
        locked.queued_at = locked.started_at = locked.finished_at = None
        locked.save(
            update_fields=[
                "status",
                "attempts",
                "params",
                "run_at",
                "progress",
                "result",
                "error",
                "stop_requested",
                "worker",
                "queued_at",
                "started_at",
                "finished_at",
                "updated_at",
            ]
        )
        extra: dict[str, Any] = {"params_changed": params_changed}
        if params_changed:
            extra.update(params=locked.params, previous_params=previous_params)
        _record_change(locked, previous_status=previous_status, event_extra=extra)
    logger.info(
        "task %s retried, attempt %s%s",
        task.pk,
        locked.attempts,
        " with new params" if params_changed else "",
    )
    transaction.on_commit(nudge_dispatcher, robust=True)
    return locked


# --- Delete ------------------------------------------------------------------------------


def task_delete(*, task_id: UUID | str) -> bool:
    """Delete a task (an operator's action, from the admin), as visible as any change: the
    owner's sockets get a persisted `task.deleted` (the page drops the row) and cached
    reads of the task and of the owner's list die. False if it was already gone.

    A running task is refused (ConflictError): its processor would go on running for a
    row that no longer exists. Cancel it, and delete it once it has stopped. A queued one
    may go: its run message finds nothing to claim (task_start), and the row lock orders
    this delete against that claim. The task's past events and inbox entries stay: they
    are the owner's history, and retention prunes them like any other.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update().filter(pk=task_id).first()
        if task is None:
            return False
        if task.status == TaskStatus.IN_PROGRESS:
            raise ConflictError(
                "Task is in_progress; cancel it, and delete it once it has stopped."
            )
        pk, owner_id = task.pk, task.owner_id  # delete() clears the instance's pk
        task.delete()
        logger.info("task %s deleted (was %s)", pk, task.status)
        change_hooks.task_deleted(task_id=pk, owner_id=owner_id)
        if owner_id is not None:
            publish(
                user_id=owner_id,
                type=protocol.TASK_DELETED,
                data={"task_id": str(pk), "title": task.title, "status": task.status},
                task_id=pk,
            )
    return True


# --- Dispatcher --------------------------------------------------------------------------


def _due_at(task: Task) -> datetime:
    """When a pending task became due: its run_at, never earlier than its creation (a run_at
    in the past, which a create accepts, must not jump the queue of other users' tasks)."""
    return max(task.run_at, task.created_at) if task.run_at else task.created_at


def dispatch_pending_tasks(*, limit: int | None = None) -> list[queue.RunOrder]:
    """Claim due pending tasks, mark them queued and send their run messages after commit;
    re-send the messages of tasks queued too long ago (message lost with a broker restart).

    SKIP LOCKED lets two dispatchers run at once: each claims different rows, and a row
    is claimed at most once because the claim also flips it out of `pending`.
    """
    limit = limit or settings.TASKHUB_DISPATCH_BATCH_SIZE
    # Before the query, never after: a create whose nudge is skipped relies on this run
    # seeing its row (tasks/nudge.py).
    clear_nudges()
    now = timezone.now()
    orders: list[queue.RunOrder] = []
    with transaction.atomic():
        # Two halves, each read through its own partial index up to `limit` rows (one
        # query walking every pending row would pass all the retries still in backoff):
        # tasks due at once, with no clock compared (a web process's clock ahead of this
        # one's must not hold a new task back), and tasks whose run_at has come. The
        # earliest due of both are claimed; the rest of what was locked is let go at
        # commit and claimed by a later run.
        pending = Task.objects.select_for_update(skip_locked=True).filter(status=TaskStatus.PENDING)
        due = sorted(
            [
                *pending.filter(run_at__isnull=True).order_by("created_at")[:limit],
                *pending.filter(run_at__isnull=False, run_at__lte=now).order_by("run_at")[:limit],
            ],
            key=_due_at,
        )[:limit]
        # Event counters are locked per owner in a fixed order, so two dispatchers working
        # on overlapping owners cannot deadlock.
        due.sort(key=lambda task: (task.owner_id or 0, task.created_at))
        # The rows are locked above: one statement moves them all (a save() per row was
        # most of a dispatch's CPU), then each change is recorded in that order. The clock
        # is read again now that the rows are ours, as save() did: a create that committed
        # while this run waited is not stamped queued before it was created.
        moved_at = timezone.now()
        Task.objects.filter(pk__in=[task.pk for task in due]).update(
            status=TaskStatus.QUEUED, queued_at=now, updated_at=moved_at
        )
        for task in due:
            task.status, task.queued_at, task.updated_at = TaskStatus.QUEUED, now, moved_at
            orders.append(queue.RunOrder.of(task))
        _record_changes(due, previous_status=TaskStatus.PENDING)

        stale = list(
            Task.objects.select_for_update(skip_locked=True)
            .filter(
                status=TaskStatus.QUEUED,
                queued_at__lt=now - timedelta(seconds=settings.TASKHUB_QUEUED_RESEND_AFTER),
            )
            .order_by("queued_at")[:limit]
        )
        for task in stale:
            logger.warning(
                "task %s queued since %s: re-sending its run message", task.pk, task.queued_at
            )
            orders.append(queue.RunOrder.of(task))
        if stale:
            # The rows are locked above; restart their resend clock in one statement.
            Task.objects.filter(pk__in=[task.pk for task in stale]).update(queued_at=now)

        if orders:
            full = len(due) == limit
            transaction.on_commit(lambda: _send_and_go_on(orders, full, limit), robust=True)
    return orders


def _send_and_go_on(orders: list[queue.RunOrder], full: bool, batch: int) -> None:
    """After the dispatcher's commit: send the run messages, and if the batch was full
    (more may be due) and every message went out, run again at once instead of at the next
    tick while the workers keep up, i.e. their queue holds less than two batches (this
    one's included). Otherwise the tick paces the dispatcher, as it always did; the rest
    of the backlog waits as `pending` rows rather than as messages in the broker, where
    one older than QUEUED_RESEND_AFTER would be sent twice. Without the re-run a burst was
    let out at one batch per tick (docs/benchmarks.md, "Drain: one statement per
    transition")."""
    sent = queue.send_run_messages(orders)
    if not full or sent < len(orders):
        return
    waiting = queue.waiting_messages()
    if waiting is not None and waiting < 2 * batch:
        nudge_dispatcher()


# --- Shutdown and the reaper -------------------------------------------------------------


def tasks_request_stop_on_worker(*, worker: str) -> int:
    """Ask every processor running on `worker` to stop at its next checkpoint. A cancel
    already asked is left as it is (the processor stops for it all the same, and it is
    recorded cancelled, not interrupted)."""
    return (
        Task.objects.filter(status=TaskStatus.IN_PROGRESS, worker=worker)
        .exclude(stop_requested=StopRequest.CANCEL)
        .update(stop_requested=StopRequest.SHUTDOWN, updated_at=timezone.now())
    )


def tasks_interrupt_on_worker(*, worker: str, error: str = INTERRUPTED_BY_SHUTDOWN) -> int:
    """End every run still in_progress on `worker` (task_end_unfinished_run: failed and
    retryable, cancelled if a cancel was asked)."""
    runs = list(
        Task.objects.filter(status=TaskStatus.IN_PROGRESS, worker=worker).values_list(
            "pk", "attempts"
        )
    )
    ended = 0
    for task_id, attempt in runs:
        task = task_end_unfinished_run(task_id=task_id, attempt=attempt, error=error)
        if task is not None:
            ended += 1
            logger.warning("task %s in_progress -> %s: %s", task_id, task.status, error)
    return ended


def task_fail_lost_run(*, task_id: UUID | str, attempt: int | None, reason: str) -> Task | None:
    """The pool process running `attempt` of this task died without a word (SIGKILL, the
    OOM killer, the hard time limit): its worker's main process saw it (Celery's
    WorkerLostError) and records it now (task_end_unfinished_run) instead of leaving it
    in_progress for the reaper's minutes (issue 13, R1). A run that recorded its outcome
    before it died, or a retry already running, is left alone (None)."""
    return task_end_unfinished_run(
        task_id=task_id, attempt=attempt, error=PROCESS_LOST.format(reason=reason)
    )


def reap_stalled_tasks() -> int:
    """Fail in_progress tasks whose deadline passed long ago: their worker died without a
    word (SIGKILL, OOM, lost machine), so nobody else will ever finish them."""
    now = timezone.now()
    grace = timedelta(seconds=settings.TASKHUB_REAPER_GRACE)
    reaped = 0
    candidates = Task.objects.filter(status=TaskStatus.IN_PROGRESS).values_list(
        "pk", "attempts", "started_at", "timeout"
    )
    for task_id, attempt, started_at, timeout in candidates:
        if started_at is None or started_at + timedelta(seconds=timeout) + grace > now:
            continue
        # The attempt read with the deadline: a retry started since is not the stalled run.
        done = task_end_unfinished_run(task_id=task_id, attempt=attempt, error=WORKER_LOST)
        if done is not None:
            reaped += 1
            logger.warning("reaper ended stalled task %s as %s", task_id, done.status)
    return reaped


# --- Idempotent create (docs/api.md, "Idempotent creates") -----------------------------

IDEMPOTENCY_KEY_MAX_LENGTH = IdempotencyKey._meta.get_field("key").max_length
# The UniqueConstraint on (owner, key): the one thing that keeps two racing requests with
# the same key (on two web processes, or REST and gRPC) from making two tasks.
IDEMPOTENCY_KEY_CONSTRAINT = "idempotency_key_per_owner"
# The status code a first create answered; a replay answers it again.
CREATED = 201


class IdempotentCreate(NamedTuple):
    task: Task
    created: bool  # False: the key's earlier task, made by an earlier request
    response_status: int  # what the first request was answered with


def idempotency_key_problem(key: str) -> str | None:
    """Why `key` cannot be an Idempotency-Key, or None if it can: 1 to 255 printable ASCII
    characters, no space at either end (HTTP drops those, so REST and gRPC would disagree
    on which key "k " is)."""
    if not key:
        return "Must not be empty."
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        return f"Must be at most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."
    if not all(" " <= char <= "~" for char in key):
        return "Must be printable ASCII characters (letters, digits, punctuation, spaces)."
    if key != key.strip(" "):
        return "Must not start or end with a space."
    return None


def _canonical(value: Any) -> Any:
    # Datetimes as one instant whatever the zone they came in; everything else as JSON.
    if isinstance(value, datetime):
        return protocol.format_ts(value)
    if isinstance(value, Mapping):
        return {str(name): _canonical(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def idempotency_request_hash(data: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a create's validated input as canonical JSON (sorted keys, no
    spaces, datetimes in UTC). Over the whole dict, not a list of fields: a field added to
    the create later is covered the day it is added."""
    text = json.dumps(
        _canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _idempotency_key_window() -> timedelta:
    return timedelta(hours=settings.TASKHUB_IDEMPOTENCY_KEY_HOURS)


def _is_idempotency_key_taken(exc: IntegrityError) -> bool:
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None) == IDEMPOTENCY_KEY_CONSTRAINT


def task_create_idempotent(
    *,
    owner: AbstractBaseUser,
    key: str,
    sent_fields: Collection[str] | None = None,
    **create_kwargs: Any,
) -> IdempotentCreate:
    """task_create(owner=owner, **create_kwargs) at most once per (owner, key) within
    TASKHUB_IDEMPOTENCY_KEY_HOURS: a repeat with the same input gets the first task back
    (created False, the first answer's status code); with other input, UnprocessableError
    (422, FAILED_PRECONDITION). A key older than the window counts as unused: it is
    replaced and a new task made. ValidationError for a malformed key.

    "The input" is the validated values of `sent_fields`, the fields the client sent
    (None: all of create_kwargs). Not the defaults a surface filled in: a field added to
    the create with a default would otherwise turn a retry that spans the deploy into a 422.

    Two requests racing with one key both find no key and both insert a task, but the
    unique (owner, key) lets only one insert its key: the other blocks on it until the
    first commits, gets the IntegrityError, rolls back its own task (its event and its
    after-commit work with it) and answers with the first one's."""
    problem = idempotency_key_problem(key)
    if problem is not None:
        raise ValidationError({"idempotency_key": [problem]})
    request_hash = idempotency_request_hash(
        {
            name: value
            for name, value in create_kwargs.items()
            if sent_fields is None or name in sent_fields
        }
    )
    # Twice at most: a lost race leaves the winner's key committed for the second pass
    # (unless the retention job deleted it in between, hence a third).
    for _ in range(3):
        try:
            with transaction.atomic():
                earlier = (
                    IdempotencyKey.objects.select_related("task")
                    .filter(owner=owner, key=key)
                    .first()
                )
                if earlier is not None and earlier.created_at < timezone.now() - (
                    _idempotency_key_window()
                ):
                    # Expired: as if unused. A racer deleting it too blocks on this row and
                    # then finds it gone; its insert then meets ours.
                    IdempotencyKey.objects.filter(pk=earlier.pk).delete()
                    earlier = None
                if earlier is not None:
                    if earlier.request_hash != request_hash:
                        raise UnprocessableError(
                            f"Idempotency-Key {key!r} was used with a different request body "
                            f"in the last {settings.TASKHUB_IDEMPOTENCY_KEY_HOURS} hours; send "
                            "that request unchanged to get its task, or use a new key."
                        )
                    return IdempotentCreate(earlier.task, False, earlier.response_status)
                task = task_create(owner=owner, **create_kwargs)
                IdempotencyKey.objects.create(
                    owner=owner,
                    key=key,
                    request_hash=request_hash,
                    task=task,
                    response_status=CREATED,
                )
                return IdempotentCreate(task, True, CREATED)
        except IntegrityError as exc:
            if not _is_idempotency_key_taken(exc):
                raise
            logger.info("idempotency key of user %s lost a race; answering the first", owner.pk)
    raise ConflictError("The Idempotency-Key was taken by a concurrent request; try again.")


def idempotency_keys_prune(*, older_than: timedelta | None = None) -> int:
    """Delete Idempotency-Keys older than the window (they already count as unused);
    the retention job (tasks.prune_idempotency_keys) runs it hourly."""
    cutoff = timezone.now() - (older_than or _idempotency_key_window())
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
