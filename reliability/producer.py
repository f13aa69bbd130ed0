"""The creating client of the outage runners (R2, R3): task creates at a steady rate over
REST (and, for R2, gRPC), whatever each answer takes, every answer recorded."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from reliability.scenarios import _http


@dataclass
class Answer:
    """One create: when it was sent and answered (epoch seconds), its status (an HTTP
    status, a gRPC code's name, or what happened instead: "no response (TimeoutError)"),
    the task id of a 2xx/OK, and what the run needs to map it to its row."""

    channel: str  # "rest" | "grpc"
    title: str
    sent: float
    answered: float
    status: Any
    task_id: str | None = None
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.task_id is not None


def rest_create(base_url: str, token: str, body: dict[str, Any], timeout: float = 60) -> Answer:
    """POST /api/tasks/ with a JWT; a 2xx carries the new task's id."""
    sent = time.time()
    status, headers, answer = _http(
        "POST", f"{base_url}/api/tasks/", token, json.dumps(body).encode(), timeout=timeout
    )
    task_id = None
    if isinstance(status, int) and 200 <= status < 300:
        task_id = json.loads(answer)["id"]
    return Answer(
        "rest", body["title"], sent, time.time(), status, task_id, headers.get("Retry-After")
    )


class Producer:
    """`create(serial)` at `rate` a second until stopped, in a pool of `workers` threads so
    that slow answers do not hold the rate back (a create that waits for a database that is
    restarting takes seconds); every Answer kept in `answers`."""

    def __init__(
        self,
        create: Callable[[int], Answer],
        rate: float,
        *,
        workers: int = 8,
        name: str = "producer",
    ) -> None:
        self.create, self.rate, self.workers, self.name = create, rate, workers, name
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(timeout=120)

    def _one(self, serial: int) -> None:
        answer = self.create(serial)
        with self._lock:
            self.answers.append(answer)

    def _run(self) -> None:
        with ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix=f"{self.name}-create"
        ) as pool:
            began = time.monotonic()
            for serial in itertools.count():
                if self.stop.is_set():
                    break
                pool.submit(self._one, serial)
                # The steady schedule: the next create at its slot, whatever this one took.
                delay = began + (serial + 1) / self.rate - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
