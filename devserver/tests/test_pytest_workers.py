"""devserver/pytest_workers.py: each pytest-xdist worker of `make test` gets a Redis
database number of its own, next to REDIS_URL's."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from devserver.pytest_workers import BASE_REDIS_URL, redis_url_for_worker, worker_index


@pytest.mark.parametrize(
    ("url", "index", "expected"),
    [
        ("redis://127.0.0.1:6379/9", 0, "redis://127.0.0.1:6379/9"),
        ("redis://127.0.0.1:6379/9", 1, "redis://127.0.0.1:6379/10"),
        ("redis://127.0.0.1:6379", 1, "redis://127.0.0.1:6379/1"),
        ("redis://127.0.0.1:6379/15", 1, "redis://127.0.0.1:6379/0"),  # Redis has 16
        (
            "redis://:secret@cache:6380/2?socket_timeout=5",
            2,
            "redis://:secret@cache:6380/4?socket_timeout=5",
        ),
    ],
)
def test_a_worker_moves_the_database_number_on_by_its_index(url, index, expected):
    assert redis_url_for_worker(url, index) == expected


def test_other_forms_of_redis_url_are_refused_rather_than_shared():
    for url in ("unix:///run/redis.sock?db=2", "redis://127.0.0.1:6379?db=3"):
        with pytest.raises(pytest.UsageError):
            redis_url_for_worker(url, 1)


def test_this_worker_runs_on_the_database_its_index_names():
    """Django read its settings (the cache, the broker, the channel layer's prefix) after
    the plugin moved REDIS_URL on, so this worker and every process its tests start use
    the database its index names."""
    index = worker_index()
    if index is None:
        pytest.skip("not under pytest-xdist (TEST_WORKERS=0)")
    expected = redis_url_for_worker(os.environ[BASE_REDIS_URL], index)
    assert expected == settings.TASKHUB_REDIS_URL
    assert expected == settings.CELERY_BROKER_URL
    assert os.environ["REDIS_URL"] == expected
