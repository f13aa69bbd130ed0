"""The cyclic garbage collector and open sockets (taskhub/gc_policy.py): with enough
sockets open, what is in use is frozen out of the collector's full passes (which stopped
a web process for about a second every 10-15 s at 5,000 sockets), young garbage is
collected rather than frozen, and cycles dropped after a freeze are still reclaimed: once
as many sockets closed as are open, every few minutes, and once the sockets fall below
the minimum."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from taskhub.gc_policy import SocketCollector


class Part:
    """Stands for an object of a socket: a reference cycle, as a protocol and its transport
    make, so only the cyclic collector can free it once nothing else holds it."""

    def __init__(self) -> None:
        self.me = self


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scanned_by_full_passes(obj: object) -> bool:
    # gc.get_objects() lists generations 0-2, the ones a pass scans; not the frozen ones.
    return any(tracked is obj for tracked in gc.get_objects())


def dropped_after_a_tick(collector: SocketCollector, open_sockets: int) -> weakref.ref[Part]:
    """A cycle in use at a tick (so frozen) and dropped after it, as a closed socket's."""
    part = Part()
    gone = weakref.ref(part)
    collector.tick(open_sockets=open_sockets)
    del part
    gc.collect()
    assert gone() is not None, "a frozen cycle is not reclaimed by an ordinary collection"
    return gone


@pytest.fixture(autouse=True)
def thawed(settings) -> Iterator[None]:
    """Each test starts and ends with nothing of the test process frozen by it; the
    minimum of open sockets is 3 unless a test says otherwise."""
    settings.TASKHUB_WS_GC_FREEZE = True
    settings.TASKHUB_WS_GC_FREEZE_MIN_SOCKETS = 3
    gc.unfreeze()
    gc.disable()  # no automatic collection moves the tests' objects behind their backs
    yield
    gc.enable()
    gc.unfreeze()


def test_a_tick_freezes_what_is_in_use_out_of_full_passes() -> None:
    collector = SocketCollector(clock=Clock())
    part = Part()
    assert scanned_by_full_passes(part)

    collector.tick(open_sockets=3)

    assert not scanned_by_full_passes(part)
    assert collector.full_passes == 0


def test_garbage_is_collected_at_the_tick_not_frozen() -> None:
    collector = SocketCollector(clock=Clock())
    part = Part()
    gone = weakref.ref(part)
    del part  # garbage before the tick (a cycle: only the collector frees it)
    collector.tick(open_sockets=3)
    assert gone() is None


def test_below_the_minimum_of_open_sockets_nothing_is_frozen() -> None:
    collector = SocketCollector(clock=Clock())
    part = Part()
    collector.tick(open_sockets=2)
    assert scanned_by_full_passes(part)


def test_cycles_are_reclaimed_a_grace_after_as_many_sockets_closed_as_are_open() -> None:
    clock = Clock()
    collector = SocketCollector(min_closed=3, grace=5, clock=clock)
    gone = dropped_after_a_tick(collector, open_sockets=4)
    in_use = Part()

    for _ in range(3):
        collector.socket_closed()
    collector.tick(open_sockets=4)  # 3 closed, 4 open: not yet
    collector.socket_closed()
    collector.tick(open_sockets=4)  # 4 closed: due, after the grace (Daphne lets go)
    clock.now += 4.9
    collector.tick(open_sockets=4)
    assert gone() is not None
    assert collector.full_passes == 0
    clock.now += 0.1
    collector.tick(open_sockets=4)  # one full pass over everything

    assert gone() is None
    assert collector.full_passes == 1
    # What is in use is frozen again by the pass itself, and the count starts over.
    assert not scanned_by_full_passes(in_use)
    clock.now += 10
    collector.tick(open_sockets=4)
    assert collector.full_passes == 1


def test_with_few_sockets_open_the_pass_waits_for_the_minimum_of_closes() -> None:
    clock = Clock()
    collector = SocketCollector(min_closed=5, grace=0, clock=clock)
    collector.tick(open_sockets=3)  # freezing starts
    for _ in range(4):
        collector.socket_closed()
    collector.tick(open_sockets=3)  # 4 closed: more than are open, fewer than the minimum
    assert collector.full_passes == 0
    collector.socket_closed()
    collector.tick(open_sockets=3)
    assert collector.full_passes == 1


def test_closes_before_freezing_started_do_not_count() -> None:
    clock = Clock()
    collector = SocketCollector(min_closed=3, grace=0, clock=clock)
    for _ in range(5):
        collector.socket_closed()  # few sockets: nothing frozen, CPython's schedule
    clock.now += 600
    collector.tick(open_sockets=3)  # freezing starts: closes and time count from here
    collector.tick(open_sockets=3)
    assert collector.full_passes == 0


def test_cycles_not_from_closed_sockets_wait_at_most_the_interval() -> None:
    clock = Clock()
    collector = SocketCollector(interval=300, grace=0, clock=clock)
    gone = dropped_after_a_tick(collector, open_sockets=10)

    clock.now += 299
    collector.tick(open_sockets=10)
    assert gone() is not None
    clock.now += 1
    collector.tick(open_sockets=10)

    assert gone() is None
    assert collector.full_passes == 1


def test_once_the_sockets_fall_below_the_minimum_one_pass_reclaims_what_was_frozen() -> None:
    clock = Clock()
    collector = SocketCollector(grace=5, clock=clock)
    gone = dropped_after_a_tick(collector, open_sockets=3)

    collector.tick(open_sockets=0)  # the last socket closed: a pass is due
    clock.now += 5
    collector.tick(open_sockets=0)

    assert gone() is None
    assert collector.full_passes == 1
    clock.now += 600  # nothing was frozen since: CPython's own schedule, no more passes
    collector.tick(open_sockets=1)
    collector.tick(open_sockets=1)
    assert collector.full_passes == 1


def test_a_gradual_drain_still_ends_with_a_pass_after_the_last_socket() -> None:
    """The pass when the sockets fell below the minimum froze those still open; once
    they are gone too, one more pass reclaims what they left."""
    clock = Clock()
    collector = SocketCollector(grace=5, clock=clock)
    collector.tick(open_sockets=4)
    collector.tick(open_sockets=2)  # below the minimum: a pass is due
    clock.now += 5
    gone = dropped_after_a_tick(collector, open_sockets=2)  # the pass, with 2 still open
    assert collector.full_passes == 1
    assert gone() is not None  # in use at the pass: frozen again by it

    collector.tick(open_sockets=1)
    clock.now += 60
    collector.tick(open_sockets=1)
    assert collector.full_passes == 1  # no pass every grace while a few stay open
    collector.tick(open_sockets=0)
    clock.now += 5
    collector.tick(open_sockets=0)

    assert collector.full_passes == 2
    assert gone() is None
    clock.now += 600
    collector.tick(open_sockets=0)
    assert collector.full_passes == 2


def test_turned_off_nothing_is_frozen_and_no_pass_is_forced(settings) -> None:
    settings.TASKHUB_WS_GC_FREEZE = False
    clock = Clock()
    collector = SocketCollector(min_closed=1, interval=1, grace=0, clock=clock)
    part = Part()
    collector.socket_closed()
    clock.now += 5
    collector.tick(open_sockets=10)
    assert scanned_by_full_passes(part)
    assert collector.full_passes == 0
