"""devserver/pytest_workers.py: each pytest-xdist worker of `make test` gets a Redis
database number of its own, next to REDIS_URL's."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from devserver.pytest_workers import redis_url_for_worker, worker_index


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


def test_the_settings_were_read_after_the_worker_moved_redis_url_on():
    """Django read its settings (the cache, the broker, the channel layer's prefix) after
    the plugin changed REDIS_URL, so this worker and every process its tests start use
    the same database number. Meaningful in a worker other than gw0."""
    if not worker_index():
        pytest.skip("not in a pytest-xdist worker that moves REDIS_URL")
    assert os.environ["REDIS_URL"] == settings.TASKHUB_REDIS_URL
    assert settings.CELERY_BROKER_URL == settings.TASKHUB_REDIS_URL
