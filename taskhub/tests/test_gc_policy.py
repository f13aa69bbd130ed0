"""The cyclic garbage collector and open sockets (taskhub/gc_policy.py): what sockets are
made of is frozen out of the collector's full passes, which stopped a web process for
about a second every few seconds at 5,000 sockets, and what is left in reference cycles
is still reclaimed: once as many sockets closed as are open, and every few minutes."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from django.test import override_settings

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


def frozen_garbage() -> weakref.ref[Part]:
    """A cycle that is garbage but was frozen while in use."""
    part = Part()
    gone = weakref.ref(part)
    gc.freeze()
    del part
    gc.collect()
    assert gone() is not None, "a frozen cycle is not reclaimed by an ordinary collection"
    return gone


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing of the test process frozen by it."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_tick_freezes_what_is_in_use_out_of_full_passes() -> None:
    collector = SocketCollector(min_closed=3, clock=Clock())
    part = Part()
    assert scanned_by_full_passes(part)

    collector.tick(open_sockets=1)

    assert not scanned_by_full_passes(part)
    assert collector.full_passes == 0


def test_cycles_wait_until_as_many_sockets_closed_as_are_open() -> None:
    collector = SocketCollector(min_closed=3, clock=Clock())
    gone = frozen_garbage()

    for _ in range(3):
        collector.socket_closed()
    collector.tick(open_sockets=4)  # 3 closed, 4 open: not yet
    assert gone() is not None
    collector.socket_closed()
    collector.tick(open_sockets=4)  # 4 closed: one full pass over everything

    assert gone() is None
    assert collector.full_passes == 1
    # What is in use is frozen again after the pass, and the count starts over.
    survivor = Part()
    collector.tick(open_sockets=4)
    assert not scanned_by_full_passes(survivor)
    assert collector.full_passes == 1


def test_with_few_sockets_open_the_full_pass_waits_for_the_minimum_of_closes() -> None:
    collector = SocketCollector(min_closed=3, clock=Clock())
    for _ in range(2):
        collector.socket_closed()
    collector.tick(open_sockets=0)
    assert collector.full_passes == 0
    collector.socket_closed()
    collector.tick(open_sockets=0)
    assert collector.full_passes == 1


def test_cycles_not_from_closed_sockets_wait_at_most_the_interval() -> None:
    clock = Clock()
    collector = SocketCollector(min_closed=3, interval=600, clock=clock)
    gone = frozen_garbage()

    clock.now += 599
    collector.tick(open_sockets=10)
    assert gone() is not None
    clock.now += 1
    collector.tick(open_sockets=10)

    assert gone() is None
    assert collector.full_passes == 1


@override_settings(TASKHUB_WS_GC_FREEZE=False)
def test_turned_off_nothing_is_frozen_and_no_pass_is_forced() -> None:
    clock = Clock()
    collector = SocketCollector(min_closed=1, interval=1, clock=clock)
    part = Part()
    collector.socket_closed()
    clock.now += 5
    collector.tick(open_sockets=1)
    assert scanned_by_full_passes(part)
    assert collector.full_passes == 0
