"""Keep CPython's cyclic garbage collector from stopping a web process full of sockets.

Why. What a socket is made of lives as long as the socket: Twisted's transport,
autobahn's protocol, the Channels consumer, and the coroutines and future of the receive
it waits in, made anew for every message it gets, which then wait for the next one
(Channels' own dispatch loop added a task, a context and an asyncio.wait() per message;
the consumer replaced it, notifications/consumers.py). The collector's full pass scans
every tracked object with the event loop stopped, and CPython starts one whenever the
objects promoted since the last pass reach a quarter of those that survived it. With
5,000 open sockets a pass took about 1 s and came every 10-15 s at 1,000 events/s (every
3-4 s while sockets connected), and it found nothing to free: open sockets are not
garbage. Delivery's p99 was those pauses (docs/benchmarks.md, "Delivery: the collector's
pauses").

What. While at least WS_GC_FREEZE_MIN_SOCKETS sockets are open, the socket hub
(notifications/consumers.py) calls `tick` about once a second, which collects the two
young generations and then `gc.freeze()`s everything tracked into the permanent
generation, which no pass scans (a constant-time list splice). CPython's own passes then
only ever scan a second's worth of objects.

What it costs. Frozen objects are still freed by reference counting the moment nothing
uses them; only reference cycles among them wait. Those come from what was alive at a
tick and was dropped later (a socket that closed since, an HTTP request in flight at the
tick: a DRF response is a cycle), and from garbage that had already reached the oldest
generation when a tick came. One full pass over everything (unfreeze,
collect, freeze) reclaims them:

* once as many sockets closed since the last pass as are open (and at least
  FULL_PASS_MIN_CLOSED), GRACE seconds after that, when Daphne has let go of them;
* at least every FULL_PASS_INTERVAL, for the rest;
* GRACE seconds after the open sockets fell below the minimum, where CPython's own
  schedule takes over again, and once more after the last socket closed if that pass
  froze sockets still open.

So what waits is bounded by those limits in time, and the full pass's pause (about 1 s at
5,000 sockets) comes every few minutes instead of every 10-15 s. How much memory waits
under heavy REST traffic beside thousands of sockets is not measured yet: each pass logs
how many unreachable objects it found (the waiting cycles), which is the figure to watch.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from django.conf import settings

logger = logging.getLogger(__name__)

# Closed sockets that justify a full pass however few are open.
FULL_PASS_MIN_CLOSED = 1000
# Seconds between full passes at most, for cycles that do not come from closed sockets.
FULL_PASS_INTERVAL = 300.0
# Seconds from the moment a pass is due to the pass, so that what closed just before is
# garbage by then: the hub releases a closed socket within RELEASE_WAIT (3 s), Daphne
# reaps it within 1 s after that, and its timeout round may hold it 2 s more.
GRACE = 10.0


class SocketCollector:
    """The freeze-and-reclaim schedule of one process (see the module docstring)."""

    def __init__(
        self,
        *,
        min_closed: int = FULL_PASS_MIN_CLOSED,
        interval: float = FULL_PASS_INTERVAL,
        grace: float = GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_closed = min_closed
        self.interval = interval
        self.grace = grace
        self.clock = clock
        self.closed_since_full_pass = 0
        self.full_passes = 0
        self.last_full_pass = clock()
        # Frozen by a tick since the last full pass (cycles may be waiting).
        self.frozen_since_full_pass = False
        # Sockets were open at the last full pass, which froze them again.
        self.sockets_frozen_by_pass = False
        self.pass_due_at: float | None = None
        self.pass_reason = ""

    def socket_closed(self) -> None:
        self.closed_since_full_pass += 1

    def tick(self, open_sockets: int) -> None:
        if not settings.TASKHUB_WS_GC_FREEZE:
            return
        now = self.clock()
        if open_sockets < settings.TASKHUB_WS_GC_FREEZE_MIN_SOCKETS:
            # CPython's schedule again. What was frozen is reclaimed once, and once more
            # when the last socket is gone if the first pass froze some still open.
            if self.frozen_since_full_pass:
                self._due(now, "open sockets fell below the minimum")
            elif open_sockets == 0 and self.sockets_frozen_by_pass:
                self._due(now, "the last socket closed")
            if self.pass_due_at is not None and now >= self.pass_due_at:
                self.full_pass(open_sockets)
            return
        if not (self.frozen_since_full_pass or self.sockets_frozen_by_pass):
            # Freezing starts from nothing frozen: count closes and time from now.
            self.closed_since_full_pass = 0
            self.last_full_pass = now
        if self.closed_since_full_pass >= max(self.min_closed, open_sockets):
            self._due(now, f"{self.closed_since_full_pass} sockets closed")
        elif now - self.last_full_pass >= self.interval:
            self._due(now, f"{self.interval:g} s since the last one")
        if self.pass_due_at is not None and now >= self.pass_due_at:
            self.full_pass(open_sockets)
            return
        # The two young generations only: a full collect() here cost ~35 ms a tick at
        # 5,000 sockets, these ~16 ms (docs/benchmarks.md, "Delivery: the collector's
        # pauses"). Garbage already in the oldest one is frozen and waits for a pass.
        # CPython seldom collects the youngest generation itself here: its count is new
        # objects less freed ones, and every delivered message frees the (frozen) receive
        # it replaces, so what this collects is about a second's worth of what lives on
        # (docs/benchmarks.md, "Delivery: the young generation and the housekeeping turns").
        gc.collect(1)
        gc.freeze()
        self.frozen_since_full_pass = True

    def _due(self, now: float, reason: str) -> None:
        if self.pass_due_at is None:
            self.pass_due_at = now + self.grace
            self.pass_reason = reason

    def full_pass(self, open_sockets: int) -> None:
        """Reclaim the cycles among frozen objects, then freeze again what is in use (what
        start-up loaded among it, taskhub/asgi.py)."""
        started = time.perf_counter()
        gc.unfreeze()
        unreachable = gc.collect()
        gc.freeze()
        logger.info(
            "gc: full pass (%s): %d unreachable objects in %.0f ms, %d sockets open",
            self.pass_reason or "asked for",
            unreachable,
            (time.perf_counter() - started) * 1000,
            open_sockets,
        )
        self.full_passes += 1
        self.closed_since_full_pass = 0
        self.last_full_pass = self.clock()
        self.pass_due_at = None
        self.pass_reason = ""
        self.frozen_since_full_pass = False
        self.sockets_frozen_by_pass = open_sockets > 0


# The process's one schedule: the collector is process-wide, whatever loop a hub runs on.
sockets = SocketCollector()
