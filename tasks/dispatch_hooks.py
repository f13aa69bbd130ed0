"""Work other apps run on the dispatcher's tick (schedules fire their due tasks there).

The beat entry "dispatch-pending-tasks" (taskhub/celery.py) is the one clock: an app that
needs a tick registers a hook in its AppConfig.ready() instead of adding a beat entry of
its own, and tasks never imports it (taskhub/tests/test_architecture.py). A hook takes no
arguments, runs before the dispatch (so the tasks it creates are queued in the same tick),
in its own transaction, and one that fails does not keep the others or the dispatch from
running.
"""

from __future__ import annotations

from collections.abc import Callable

_hooks: dict[str, Callable[[], object]] = {}


def register(name: str, hook: Callable[[], object]) -> None:
    """Run `hook` on every dispatcher tick (the name is for the logs; re-registering a name
    replaces its hook)."""
    _hooks[name] = hook


def registered() -> list[tuple[str, Callable[[], object]]]:
    return list(_hooks.items())
