"""Where apps built on tasks plug into a task's life without tasks importing them.

An app registers its functions in its AppConfig.ready() (webhooks does:
webhooks/apps.py), the same way chat plugs its commands into notifications' socket
(docs/architecture.md, "Apps and layers"). tasks.services calls the hooks; with none
registered they do nothing.

- status listeners run inside the transaction that changed a task's status (after the
  row and its event are written), so whatever they write commits or rolls back with the
  change itself: an outbox row, not a side effect. They must not do I/O. A create is no
  status change (a new task is pending) and calls none: its row and event are one
  statement with no room for a listener's write (tasks.services.task_create). Until
  December 2026 listeners were also called for a create, with previous_status None; a
  listener written for that gets no such call now.
- callback URL validators refuse a task's callback_url with a ValidationError
  ({"callback_url": [...]}) at create, on every surface alike.
- tick hooks run on every dispatcher tick (tasks.tasks.dispatch_pending_tasks, beat's one
  clock), before the dispatch, so the tasks they create are queued in the same tick
  (schedules fire due schedules there). A hook takes no arguments and runs its own
  transaction; one that fails is logged and the dispatch goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.models import Task

StatusListener = Callable[["Task", str], None]
CallbackUrlValidator = Callable[[str], None]

_status_listeners: list[StatusListener] = []
_callback_url_validators: list[CallbackUrlValidator] = []
_tick_hooks: dict[str, Callable[[], object]] = {}


def register_status_listener(listener: StatusListener) -> None:
    """`listener(task, previous_status)` in the transaction of every status change (not of
    a create). Registering twice registers once."""
    if listener not in _status_listeners:
        _status_listeners.append(listener)


def register_callback_url_validator(validator: CallbackUrlValidator) -> None:
    if validator not in _callback_url_validators:
        _callback_url_validators.append(validator)


def task_status_changed(task: Task, *, previous_status: str) -> None:
    for listener in _status_listeners:
        listener(task, previous_status)


def callback_url_validate(url: str) -> None:
    """Raises django.core.exceptions.ValidationError({"callback_url": [...]}) when an app
    refuses `url`; an empty URL is "none" and never refused."""
    if not url:
        return
    for validator in _callback_url_validators:
        validator(url)


def register_tick_hook(name: str, hook: Callable[[], object]) -> None:
    """Run `hook()` on every dispatcher tick (`name` is for the logs; registering a name
    again replaces its hook)."""
    _tick_hooks[name] = hook


def tick_hooks() -> list[tuple[str, Callable[[], object]]]:
    return list(_tick_hooks.items())
