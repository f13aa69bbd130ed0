"""API rate limits (taskhub/throttling.py): DRF's sliding-window rule and 429 answer."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django_redis import get_redis_connection

from taskhub.throttling import OneRoundTripThrottle

pytestmark = pytest.mark.django_db


def rates(*, user: str = "6000/min", anon: str = "600/min"):
    from django.conf import settings

    return override_settings(
        REST_FRAMEWORK={
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"user": user, "anon": anon},
        }
    )


class Clock:
    """The throttle's clock (DRF's `timer` seam), moved only by the test: a window slides
    when the test says so, however slow the machine is."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(OneRoundTripThrottle, "timer", clock)
    return clock


@pytest.fixture(autouse=True)
def fresh_logs():
    """User ids repeat from test to test; their logs in Redis must not."""
    client = get_redis_connection("default")
    for key in client.scan_iter(match="*throttle_*"):
        client.delete(key)


def test_alice_past_her_rate_gets_a_429_with_a_json_message_and_retry_after(
    alice, client_for, clock
):
    client = client_for(alice)
    with rates(user="3/min"):
        statuses = []
        for _ in range(3):
            statuses.append(client.get("/api/tasks/").status_code)
            clock.advance(1)
        clock.advance(2)
        refused = client.get("/api/tasks/")

    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/json"
    detail = refused.json()["detail"]
    assert detail.startswith("Request was throttled. Expected available in ")
    # The oldest of the three requests, 5 s old, leaves the window in 55 s.
    assert refused["Retry-After"] == "55"


def test_bob_is_not_held_back_by_alices_requests(alice, bob, client_for):
    with rates(user="2/min"):
        for _ in range(3):
            client_for(alice).get("/api/tasks/")
        answers = [client_for(bob).get("/api/tasks/").status_code for _ in range(2)]

    assert answers == [200, 200]


def test_a_refused_request_is_not_counted_and_the_window_slides(alice, client_for, clock):
    client = client_for(alice)
    with rates(user="2/min"):
        first = [client.get("/api/tasks/").status_code for _ in range(2)]
        refused = []
        for _ in range(5):  # refused, so none of these may extend the wait
            clock.advance(10)
            refused.append(client.get("/api/tasks/").status_code)
        clock.advance(10.5)  # 60.5 s after the first two
        after_the_window = [client.get("/api/tasks/").status_code for _ in range(3)]

    assert first == [200, 200]
    assert refused == [429] * 5
    assert after_the_window == [200, 200, 429]


def test_anonymous_clients_are_limited_per_address(client_for):
    anonymous = client_for(None)
    with rates(anon="2/min"):
        answers = [
            anonymous.post("/api/auth/token/", {"username": "x", "password": "y"}).status_code
            for _ in range(3)
        ]

    assert answers == [401, 401, 429]


def anon_answers(client, forwarded_for: list[str]) -> list[int]:
    """Anonymous requests (a login with a wrong password), each with its own header."""
    return [
        client.post(
            "/api/auth/token/",
            {"username": "nobody", "password": "wrong"},
            content_type="application/json",
            HTTP_X_FORWARDED_FOR=value,
        ).status_code
        for value in forwarded_for
    ]


def test_a_made_up_forwarded_for_does_not_dodge_the_anonymous_limit(client):
    with rates(anon="2/min"):
        answers = anon_answers(client, ["203.0.113.1", "203.0.113.2", "203.0.113.3"])

    assert answers[2] == 429  # NUM_PROXIES=0: the peer's address counts, not the header


def test_behind_one_proxy_each_client_address_it_reports_has_its_own_limit(client):
    from django.conf import settings

    with override_settings(
        REST_FRAMEWORK={
            **settings.REST_FRAMEWORK,
            "NUM_PROXIES": 1,
            "DEFAULT_THROTTLE_RATES": {"user": "6000/min", "anon": "2/min"},
        }
    ):
        # nginx overwrites the header with the address it saw (deploy/nginx/proxy.conf).
        first = anon_answers(client, ["203.0.113.1"] * 3)
        second = anon_answers(client, ["203.0.113.2"])

    assert first == [401, 401, 429]
    assert second == [401]
