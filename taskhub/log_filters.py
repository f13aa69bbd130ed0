"""Logging filters referenced from settings.LOGGING."""

from __future__ import annotations

import logging


class DropRoutineTicks(logging.Filter):
    """Drop the per-second lines of the dispatcher's beat tick and the worker's receipt of
    it: at one a second they would drown the task lines ("task <id> status a -> b") and
    every other beat message, which stay."""

    ROUTINE = ("dispatch-pending-tasks", "tasks.dispatch_pending_tasks")

    def filter(self, record: logging.LogRecord) -> bool:
        # Only the routine lines: a tick that failed ("raised unexpected") must be seen.
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        return not any(name in message for name in self.ROUTINE)
