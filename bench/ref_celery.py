"""The bare-Celery reference for the drain: a task that does nothing but count itself,
on the same broker (REDIS_URL) and the same worker options as TaskHub's worker, in a queue
of its own. No Django: what is left is Celery's own cost per task.

    celery -A bench.ref_celery worker --concurrency 2 -Q bench_ref
"""

from __future__ import annotations

import os

import redis
from celery import Celery

QUEUE = "bench_ref"
DONE_KEY = "bench:ref:celery:done"

app = Celery("bench_ref", broker=os.environ["REDIS_URL"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    # As TaskHub's worker (taskhub/settings.py): one message at a time per process.
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_redis: redis.Redis | None = None


@app.task(name="bench_ref.noop")
def noop(index: int) -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    _redis.incr(DONE_KEY)
