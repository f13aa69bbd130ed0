"""R6 (issue 13; docs/reliability.md): malformed WebSocket frames against one real Daphne.

A raw-frame client (notifications/tests/raw_ws.py: a socket and struct, RFC 6455 §5 by
hand; no client library sends these) opens authenticated sockets and sends what a broken
or hostile client would: random bytes, text that is not UTF-8 (whole or split across
fragments), reserved opcodes and RSV bits, unmasked frames, lengths over the limit or
over 2^63, fragments adding up past the limit, continuations with nothing to continue,
control frames that are too long, fragmented or carry a bad close code or reason, ping
floods, frames cut off by a hang-up, valid frames that are not the protocol's. Each
connection gets one kind; the outcome is the close code the server sent (or what
happened instead), checked against the codes RFC 6455 and docs/protocol.md name for it.

Meanwhile an observer, a normal client of another user, pings and receives its tasks'
events: it must get every pong and every event. At the end: tracebacks in Daphne's log,
the process's RSS against its start.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from django.db import connections

from devserver import testing
from notifications.tests.raw_ws import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionDropped,
    RawWebSocket,
    frame_header,
    masked,
)
from reliability.scenarios import Result, make_user, token_for

OP_CONTINUATION = 0x0
MAX_FRAME = 64 * 1024  # WS_MAX_FRAME_BYTES for the run (its default, set explicitly)
ANSWER_TIMEOUT = 10.0  # a bound on the server's answer to one malformed frame
INCOMPLETE_WAIT = 2.0  # a frame cut short: how long to wait before calling it incomplete
# Outcomes that are not a close code.
INCOMPLETE = "waits for the rest of the frame"
OPEN = "open (error frames only)"
HUNG_UP = "client hung up"
DROPPED = "TCP closed without a close frame"
# Every outcome a malformed frame may end in: RFC 6455's protocol error, invalid payload
# (UTF-8), message too big; our 4400 (bad request) and 4429 (too many messages); 1000
# when the client's own valid close is echoed (random bytes can spell one).
RFC_CLOSES = {1000, 1002, 1007, 1009, 4400, 4429}

BAD_UTF8 = [
    b"\xff\xfe",
    b"\xc3\x28",  # a 2-byte sequence with a bad continuation
    b"\xe2\x82",  # truncated
    b"\xed\xa0\x80",  # a UTF-16 surrogate
    b"\xc0\xaf",  # overlong "/"
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b'{"type":"ping","ref":"\x80"}',
]


@dataclass(frozen=True)
class Kind:
    """One kind of malformed input: how to send it, how many frames it counts as, and
    the outcomes allowed (close codes or the other outcome strings)."""

    name: str
    send: Callable[[RawWebSocket, random.Random], None]
    allowed: frozenset[Any]
    frames: int = 1
    wait_welcome: bool = True
    wait: float = ANSWER_TIMEOUT


def _frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    key = os.urandom(4) if mask else b""
    header = bytearray(frame_header(opcode, len(payload), fin=fin, mask=key or b"\0\0\0\0"))
    header[0] |= rsv << 4
    if not mask:
        header[1] &= 0x7F
        del header[-4:]
        return bytes(header) + payload
    return bytes(header) + masked(payload, key)


def _close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def _send_random(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(rng.randbytes(rng.randint(2, 64)))


def _send_bad_utf8(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(_frame(OP_TEXT, b'{"type":"ping"}' + rng.choice(BAD_UTF8)))


def _send_bad_utf8_fragments(ws: RawWebSocket, rng: random.Random) -> None:
    # A valid start, then a continuation carrying the bad bytes (the sequence may even be
    # split across the two frames: b"\xe2\x82" then b"\x28").
    ws.send_raw(_frame(OP_TEXT, b'{"type":"ping","ref":"\xe2\x82', fin=False))
    ws.send_raw(_frame(OP_CONTINUATION, b'\x28"}'))


def _send_bad_opcode(ws: RawWebSocket, rng: random.Random) -> None:
    opcode = rng.choice([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
    ws.send_raw(_frame(opcode, b"x" * rng.randint(0, 20)))


def _send_rsv(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(_frame(OP_TEXT, b'{"type":"ping"}', rsv=rng.randint(1, 7)))


def _send_unmasked(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(_frame(OP_TEXT, b'{"type":"ping"}', mask=False))


def _send_huge_length(ws: RawWebSocket, rng: random.Random) -> None:
    length = rng.choice([MAX_FRAME + 1, 2 * 1024 * 1024, 2**31, 2**62])
    mask = os.urandom(4)
    ws.send_raw(frame_header(OP_TEXT, length, mask=mask) + masked(b"x" * 512, mask))


def _send_length_msb(ws: RawWebSocket, rng: random.Random) -> None:
    # A 64-bit length with its most significant bit set: RFC 6455 §5.2 forbids it.
    ws.send_raw(bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 2**63 + 5) + os.urandom(4))


def _send_oversize_fragments(ws: RawWebSocket, rng: random.Random) -> None:
    half = b"x" * (MAX_FRAME // 2 + 1)
    ws.send_raw(_frame(OP_TEXT, b'{"type":"ping","pad":"' + half, fin=False))
    ws.send_raw(_frame(OP_CONTINUATION, half, fin=False))


def _send_lone_continuation(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(_frame(OP_CONTINUATION, b'{"type":"ping"}', fin=rng.random() < 0.5))


def _send_interleaved(ws: RawWebSocket, rng: random.Random) -> None:
    # A new data message while a fragmented one is still open.
    ws.send_raw(_frame(OP_TEXT, b'{"type":', fin=False))
    ws.send_raw(_frame(rng.choice([OP_TEXT, OP_BINARY]), b'{"type":"ping"}'))


def _send_long_control(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(_frame(rng.choice([OP_PING, OP_PONG]), b"p" * rng.randint(126, 4000)))


def _send_fragmented_control(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(_frame(rng.choice([OP_PING, OP_PONG, OP_CLOSE]), b"abc", fin=False))


def _send_bad_close(ws: RawWebSocket, rng: random.Random) -> None:
    payload = rng.choice(
        [
            b"\x03",  # one byte: no room for a code
            _close_payload(rng.choice([0, 999, 1004, 1005, 1006, 1015, 1100, 2999, 5000])),
        ]
    )
    ws.send_raw(_frame(OP_CLOSE, payload))


def _send_close_bad_reason(ws: RawWebSocket, rng: random.Random) -> None:
    ws.send_raw(_frame(OP_CLOSE, _close_payload(1000, rng.choice(BAD_UTF8))))


def _send_ping_flood(ws: RawWebSocket, rng: random.Random) -> None:
    # 50 pings (control frames: autobahn answers them, the consumer never sees them), then
    # a proper close: every ping answered, the close echoed.
    ws.send_raw(b"".join(_frame(OP_PING, os.urandom(rng.randint(0, 125))) for _ in range(50)))
    ws.send_raw(_frame(OP_CLOSE, _close_payload(1000)))


def _send_not_protocol(ws: RawWebSocket, rng: random.Random) -> None:
    # Frames valid on the wire that are not the protocol: binary, non-JSON, a list, no
    # type. Each is answered with an `error`; WS_MAX_BAD_FRAMES (10) of them close 4400.
    bad = [b"not json", b"[1,2]", b'{"no":"type"}', b'{"type":"nope"}', b"\x00\x01"]
    for number in range(10):
        opcode = OP_BINARY if number % 3 == 0 else OP_TEXT
        ws.send_raw(_frame(opcode, rng.choice(bad)))


def _send_truncated_then_hang_up(ws: RawWebSocket, rng: random.Random) -> None:
    mask = os.urandom(4)
    ws.send_raw(frame_header(OP_TEXT, 1000, mask=mask) + masked(b"x" * rng.randint(0, 999), mask))
    ws.sock.shutdown(socket.SHUT_WR)


KINDS = [
    Kind(
        "random bytes",
        _send_random,
        frozenset(RFC_CLOSES | {INCOMPLETE, OPEN}),
        wait=INCOMPLETE_WAIT,
    ),
    Kind("invalid UTF-8 text", _send_bad_utf8, frozenset({1007})),
    Kind("invalid UTF-8 across fragments", _send_bad_utf8_fragments, frozenset({1007}), 2),
    Kind("invalid UTF-8 before the welcome", _send_bad_utf8, frozenset({1007}), 1, False),
    Kind("reserved opcode", _send_bad_opcode, frozenset({1002})),
    Kind("RSV bits without an extension", _send_rsv, frozenset({1002})),
    Kind("unmasked client frame", _send_unmasked, frozenset({1002})),
    Kind("length over the limit", _send_huge_length, frozenset({1009})),
    Kind("64-bit length with the top bit set", _send_length_msb, frozenset({1002, 1009})),
    Kind("fragments past the limit", _send_oversize_fragments, frozenset({1009}), 2),
    Kind("continuation with nothing to continue", _send_lone_continuation, frozenset({1002})),
    Kind("new message inside a fragmented one", _send_interleaved, frozenset({1002}), 2),
    Kind("control frame over 125 bytes", _send_long_control, frozenset({1002})),
    Kind("fragmented control frame", _send_fragmented_control, frozenset({1002})),
    Kind("close with a bad code or length", _send_bad_close, frozenset({1002})),
    Kind("close with an invalid UTF-8 reason", _send_close_bad_reason, frozenset({1007})),
    Kind("ping flood then close", _send_ping_flood, frozenset({1000}), 51),
    Kind("frames that are not the protocol", _send_not_protocol, frozenset({4400}), 10),
    Kind("frame cut off by a hang-up", _send_truncated_then_hang_up, frozenset({HUNG_UP})),
]


def _outcome(ws: RawWebSocket, kind: Kind) -> tuple[Any, int]:
    """The close code the server sent (or another outcome), and the pongs it sent."""
    if kind.send is _send_truncated_then_hang_up:
        return HUNG_UP, 0
    pongs = 0
    ws.sock.settimeout(kind.wait)
    try:
        while True:
            frame = ws.receive()
            if frame.opcode == OP_CLOSE:
                return frame.close_code, pongs
            if frame.opcode == OP_PONG:
                pongs += 1
    except ConnectionDropped:
        return DROPPED, pongs
    except TimeoutError:
        return (INCOMPLETE if kind.name == "random bytes" else OPEN), pongs
    except OSError as error:  # a reset
        return f"{DROPPED} ({type(error).__name__})", pongs


@dataclass
class Tally:
    frames: int = 0
    connections: int = 0
    outcomes: Counter[tuple[str, Any]] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: Kind, outcome: Any, pongs: int) -> None:
        with self.lock:
            self.frames += kind.frames
            self.connections += 1
            self.outcomes[(kind.name, outcome)] += 1
            bad = outcome not in kind.allowed
            if kind.send is _send_ping_flood and pongs != 50:
                bad = True
                outcome = f"{outcome} after {pongs} of 50 pongs"
            if bad and len(self.wrong) < 20:
                self.wrong.append(f"{kind.name}: {outcome}")
            elif bad:
                self.wrong.append("...")


def _attack(base_url: str, token: str, rng: random.Random, tally: Tally, total: int) -> None:
    number = 0
    while True:
        with tally.lock:
            if tally.frames >= total:
                return
        kind = KINDS[number % len(KINDS)] if number < len(KINDS) else rng.choice(KINDS)
        number += 1
        try:
            ws = RawWebSocket.connect(base_url, f"/ws?token={token}")
        except (OSError, AssertionError) as error:
            tally.add(kind, f"handshake failed ({type(error).__name__}: {error})"[:120], 0)
            continue
        try:
            if kind.wait_welcome:
                welcome = ws.receive()
                assert json.loads(welcome.payload)["type"] == "welcome", welcome
            kind.send(ws, rng)
            outcome, pongs = _outcome(ws, kind)
        except (OSError, ConnectionDropped, AssertionError, ValueError) as error:
            outcome, pongs = f"client error ({type(error).__name__}: {error})"[:120], 0
        finally:
            ws.close()
        tally.add(kind, outcome, pongs)


class Observer(threading.Thread):
    """A well-behaved client of its own user beside the attack: a ping every 0.5 s and a
    task created every 2 s (its task.updated event must arrive)."""

    def __init__(self, base_url: str, user: Any, token: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.user, self.token = base_url, user, token
        self.stop = threading.Event()
        self.pings = self.pongs = 0
        self.created: set[str] = set()
        self.received: set[str] = set()
        self.error: str | None = None

    def run(self) -> None:
        from websockets.sync.client import connect

        from tasks import services

        url = self.base_url.replace("http://", "ws://") + f"/ws?token={self.token}"
        try:
            with connect(url, additional_headers={"Origin": self.base_url}) as ws:
                assert json.loads(ws.recv(timeout=30))["type"] == "welcome"
                last_create = 0.0
                while not self.stop.is_set():
                    self.pings += 1
                    ws.send(json.dumps({"type": "ping", "ref": self.pings}))
                    if time.monotonic() - last_create > 2:
                        last_create = time.monotonic()
                        task = services.task_create(
                            owner=self.user, title="observer", kind="echo", params={}
                        )
                        self.created.add(str(task.pk))
                    self._drain(ws, until=time.monotonic() + 0.5)
                # The last events and pongs: bounded.
                deadline = time.monotonic() + 15
                while (self.pongs < self.pings or self.created - self.received) and (
                    time.monotonic() < deadline
                ):
                    self._drain(ws, until=time.monotonic() + 0.5)
        except Exception as error:  # reported as the observer's failure
            self.error = f"{type(error).__name__}: {error}"
        finally:
            connections.close_all()

    def _drain(self, ws: Any, *, until: float) -> None:
        while (left := until - time.monotonic()) > 0:
            try:
                frame = json.loads(ws.recv(timeout=left))
            except TimeoutError:
                return
            if frame["type"] == "pong":
                self.pongs += 1
            elif frame["type"] == "task.updated":
                self.received.add(frame["data"]["task_id"])


def _rss(proc: psutil.Process) -> int:
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(True))


def r6_malformed_frames(*, frames: int, clients: int = 4, seed: int = 13) -> Result:
    """`frames` malformed frames from `clients` raw-frame clients (one user each), one
    kind per connection, against one Daphne, with an observer alongside."""
    web, base_url = testing.start_daphne(extra_env={"WS_MAX_FRAME_BYTES": str(MAX_FRAME)})
    proc = psutil.Process(web.proc.pid)
    tally = Tally()
    observer_user = make_user("r6-observer")
    observer = Observer(base_url, observer_user, token_for(observer_user))
    tokens = [token_for(make_user(f"r6-{n}")) for n in range(clients)]
    started = time.monotonic()
    try:
        start_rss = _rss(proc)

        def attack(total: int, batch: int) -> list[threading.Thread]:
            threads = [
                threading.Thread(
                    target=_attack,
                    args=(base_url, token, random.Random(seed + 100 * batch + n), tally, total),
                    daemon=True,
                )
                for n, token in enumerate(tokens)
            ]
            for thread in threads:
                thread.start()
            return threads

        # Warm-up, with every client at once (a tenth of the run, at least one connection
        # of each kind): first-use allocations (imports, pools, the threads of
        # sync_to_async and their database connections, caches) are not counted as
        # growth; the RSS baseline is taken after it. The start is reported too.
        warmup = max(sum(k.frames for k in KINDS), frames // 10)
        _attack(base_url, tokens[0], random.Random(seed), tally, sum(k.frames for k in KINDS))
        for thread in attack(warmup, 0):
            thread.join()
        time.sleep(1)
        baseline = _rss(proc)
        observer.start()
        curve = [(0, baseline / 2**20)]
        measured_from = tally.frames
        threads = attack(measured_from + frames, 1)
        step = max(1, frames // 4)
        next_point = step
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if tally.frames - measured_from >= next_point:
                curve.append((tally.frames - measured_from, _rss(proc) / 2**20))
                next_point += step
        for thread in threads:
            thread.join()
        observer.stop.set()
        observer.join(timeout=60)
        time.sleep(2)  # the last disconnect handlers
        end = _rss(proc)
        curve.append((tally.frames - measured_from, end / 2**20))
        alive = web.proc.poll() is None
    finally:
        observer.stop.set()
        web.stop()
    elapsed = time.monotonic() - started
    tracebacks = web.output.count("Traceback")
    growth = (end - baseline) / 2**20
    failures: list[str] = []
    if tally.wrong:
        failures.append(f"unexpected outcomes: {tally.wrong[:10]}")
    if tracebacks:
        lines = [line for line in web.output.splitlines() if '"WS' not in line]
        first = next(i for i, line in enumerate(lines) if "Traceback" in line)
        excerpt = " / ".join(lines[max(0, first - 2) : first + 30])
        failures.append(f"{tracebacks} traceback(s) in Daphne's log; the first: {excerpt}")
    if not alive:
        failures.append("Daphne died")
    if observer.error:
        failures.append(f"the observer failed: {observer.error}")
    missed_events = len(observer.created - observer.received)
    if observer.pongs < observer.pings or missed_events:
        failures.append(
            f"the observer got {observer.pongs}/{observer.pings} pongs, "
            f"{len(observer.received)}/{len(observer.created)} events"
        )
    misses: list[str] = []
    if growth >= 10:
        # A resource target, not a correctness one: reported, not asserted by the quick
        # test (docs/reliability.md, "R6", says what the curve shows).
        misses.append(f"RSS grew {growth:.1f} MiB (target < 10)")
    codes = Counter()
    for (_, outcome), count in tally.outcomes.items():
        codes[outcome] += count
    by_code = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(), key=str))
    points = ", ".join(f"{n}: {mb:.0f}" for n, mb in curve)
    measured = (
        f"{tally.frames - measured_from} malformed frames after a warm-up of "
        f"{measured_from} ({len(KINDS)} kinds, one per connection, {tally.connections} "
        f"connections in all, {clients} clients, {elapsed:.0f} s): outcomes "
        f"{by_code}; {len(tally.wrong)} unexpected; tracebacks in Daphne's log: {tracebacks}; "
        f"observer alongside: {observer.pongs}/{observer.pings} pongs, "
        f"{len(observer.received)}/{len(observer.created)} task events; RSS "
        f"{growth:+.1f} MiB after the warm-up (MiB at frame {points}; "
        f"{(end - start_rss) / 2**20:+.1f} MiB from the process's start)"
    )
    figures = {
        "outcomes": {f"{k} -> {o}": n for (k, o), n in tally.outcomes.items()},
        "growth_mib": growth,
        "tracebacks": tracebacks,
    }
    if failures:
        log = Path(tempfile.mkdtemp(prefix="reliability-r6-")) / "daphne.log"
        log.write_text(web.output)
        failures.append(f"Daphne's whole log: {log}")
    with contextlib.suppress(Exception):
        connections.close_all()
    return Result("R6", measured, failures, figures, misses)
