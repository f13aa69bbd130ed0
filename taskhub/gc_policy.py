"""Keep CPython's cyclic garbage collector from stopping a web process full of sockets.

Why. What a socket is made of lives as long as the socket: Twisted's transport,
autobahn's protocol, the Channels consumer, and the task, coroutine, future and context
its dispatch loop creates anew for every message it receives (channels.utils'
await_many_dispatch), which then wait for the next one. The collector's full pass scans
every tracked object with the event loop stopped, and CPython starts one whenever the
objects promoted since the last pass reach a quarter of those that survived it. With
5,000 open sockets a pass took about 1 s and came every 10-15 s at 1,000 events/s (every
3-4 s while sockets connected), and it freed nothing: open sockets are not garbage.
Delivery's p99 was those pauses (docs/benchmarks.md, "Delivery: the collector's pauses").

What. `gc.freeze()` moves every tracked object into the permanent generation, which no
pass scans; it is a constant-time list splice. The web process freezes what start-up
loaded (taskhub/asgi.py), and the socket hub (notifications/consumers.py) calls `tick`
about once a second while sockets are open, which freezes again: the collector's own
passes only ever scan what is younger than a second. Frozen objects are still freed by
reference counting the moment nothing uses them; only reference cycles among them wait.
For those, this schedule runs one full pass over everything (unfreeze, collect, freeze):
once as many sockets closed since the last one as are open (and at least
FULL_PASS_MIN_CLOSED), since closed sockets are where cycles come from, and at least
every FULL_PASS_INTERVAL for anything else. That pass's pause (about 1 s at 5,000
sockets) comes every many minutes instead of every few seconds, and what waits for it is
bounded by those two limits.
"""

from __future__ import annotations

import gc
import logging
import time

from django.conf import settings

logger = logging.getLogger(__name__)

# Closed sockets that justify a full pass even with few sockets open (a pass with few
# sockets open is short).
FULL_PASS_MIN_CLOSED = 1000
# Seconds between full passes at most, for cycles that do not come from closed sockets.
FULL_PASS_INTERVAL = 600.0


class SocketCollector:
    """The freeze-and-reclaim schedule of one process (see the module docstring). The
    socket hub reports closes and calls `tick` from its housekeeping loop."""

    def __init__(
        self,
        *,
        min_closed: int = FULL_PASS_MIN_CLOSED,
        interval: float = FULL_PASS_INTERVAL,
        clock=time.monotonic,
    ) -> None:
        self.min_closed = min_closed
        self.interval = interval
        self.clock = clock
        self.closed_since_full_pass = 0
        self.full_passes = 0
        self.last_full_pass = clock()

    def socket_closed(self) -> None:
        self.closed_since_full_pass += 1

    def tick(self, open_sockets: int) -> None:
        if not settings.TASKHUB_WS_GC_FREEZE:
            return
        if (
            self.closed_since_full_pass >= max(self.min_closed, open_sockets)
            or self.clock() - self.last_full_pass >= self.interval
        ):
            self.full_pass(open_sockets)
        else:
            gc.freeze()

    def full_pass(self, open_sockets: int) -> None:
        """Reclaim the cycles among frozen objects, then freeze again what is in use."""
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        logger.info(
            "gc: full pass after %d sockets closed: %d objects freed in %.0f ms, %d sockets open",
            self.closed_since_full_pass,
            freed,
            (time.perf_counter() - started) * 1000,
            open_sockets,
        )
        self.full_passes += 1
        self.closed_since_full_pass = 0
        self.last_full_pass = self.clock()


# The process's one schedule: the collector is process-wide, whatever loop a hub runs on.
sockets = SocketCollector()
