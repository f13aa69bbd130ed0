from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection

from taskhub.outages import DATABASE, is_database_outage
from tasks import selectors
from tasks.models import StopRequest, Task


def _outage_met(exc: BaseException, consequence: str) -> None:
    """Report the outage (one line per outage, taskhub.outages) and drop the connection
    the error left unusable, so the next query takes a fresh one instead of raising
    "connection already closed" until the end of the run."""
    DATABASE.failed(exc, consequence)
    if not connection.in_atomic_block:
        connection.close()


class StopRequested(Exception):
    """Raised at a checkpoint when the task was cancelled or its worker is shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProcessorContext:
    """What a processor sees of its task, and how it reports back."""

    # A tight loop calling checkpoint() must not turn into a query storm.
    CHECKPOINT_MIN_INTERVAL = 0.1

    def __init__(self, task: Task, *, report_progress: Callable[[int], None]) -> None:
        """`report_progress` stores a value and tells the owner; the runner
        (tasks.services.task_run) hands it in, so this module needs no service."""
        self.task = task
        self._store_progress = report_progress
        self.task_id = task.pk
        self.title = task.title
        self.description = task.description
        self.params: dict[str, Any] = dict(task.params or {})
        self.timeout = task.timeout
        # Which run of the task this is (1 first; more after a retry, automatic or manual).
        self.attempt = task.attempts
        self._last_progress_at = 0.0
        self._last_progress = -1
        self._full_progress_pending = False
        # The claim that started this run read the row and cleared any stop request
        # (tasks.services.task_start) just now: it counts as the first checkpoint, so a
        # processor's checkpoint() in its first CHECKPOINT_MIN_INTERVAL costs no query.
        self._last_checkpoint_at = time.monotonic()

    def report_progress(self, percent: float) -> None:
        """Record progress 0-100. Throttled: progress pushes are for eyes, not for logs."""
        value = max(0, min(100, int(percent)))
        now = time.monotonic()
        if value == self._last_progress:
            return
        if value == 100:
            # Completion records 100 % itself (task_complete, in the transaction of its
            # task.updated event), so the usual last call, report_progress(100) just before
            # returning, would be a write and a push for nothing: it waits for the next
            # checkpoint, and is stored there if the processor goes on working.
            self._full_progress_pending = True
            return
        self._full_progress_pending = False  # a lower value after it: that one stands
        if now - self._last_progress_at < settings.TASKHUB_PROGRESS_MIN_INTERVAL:
            return
        self._last_progress, self._last_progress_at = value, now
        self._store(value)

    def _store(self, value: int) -> None:
        try:
            self._store_progress(value)
        except Exception as exc:
            # Progress is for eyes: one lost while PostgreSQL restarts is not worth the run.
            if not is_database_outage(exc):
                raise
            _outage_met(exc, "running tasks go on without storing their progress")

    def checkpoint(self) -> None:
        """Raise StopRequested if the task was cancelled or the worker is stopping."""
        if self._full_progress_pending:
            self._full_progress_pending = False
            self._last_progress, self._last_progress_at = 100, time.monotonic()
            self._store(100)
        now = time.monotonic()
        if now - self._last_checkpoint_at < self.CHECKPOINT_MIN_INTERVAL:
            return
        self._last_checkpoint_at = now
        try:
            reason = selectors.task_stop_request(task_id=self.task_id)
        except Exception as exc:
            # PostgreSQL is away (a restart, issue 13 R2): whether a stop was asked cannot
            # be known now, so the work goes on and the next checkpoint asks again. Failing
            # the run instead would throw away work the outage never touched; its outcome
            # write waits for the database (services._until_recorded).
            if not is_database_outage(exc):
                raise
            _outage_met(exc, "running tasks go on without checking for a stop request")
            return
        if reason:
            raise StopRequested(reason)
        if reason is None:  # the row was deleted under us
            raise StopRequested(StopRequest.CANCEL)

    def sleep(self, seconds: float) -> None:
        """Sleep in short slices, checking for a stop request between them."""
        deadline = time.monotonic() + seconds
        while True:
            self.checkpoint()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.2))
