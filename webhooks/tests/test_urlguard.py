"""SSRF: callback URLs that resolve to loopback, private, link-local or other non-public
addresses are refused, when given and again before each attempt (docs/webhooks.md)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tasks import services as task_services
from webhooks import services, urlguard
from webhooks.models import WebhookDelivery

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.1.2.3:8080/hook",
    "http://10.0.0.5/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[2002:7f00:1::]/hook",  # 6to4 around 127.0.0.1
    "http://[2002:a9fe:a9fe::]/hook",  # 6to4 around 169.254.169.254
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo
    "http://0.0.0.0/hook",
    "http://100.64.0.1/hook",
    "http://224.0.0.1/hook",
    "http://localhost:8000/hook",
]


@pytest.fixture
def fake_dns(monkeypatch):
    answers: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("no such host")
        return answers[host]

    monkeypatch.setattr(urlguard, "resolve", resolve)
    return answers


@pytest.mark.parametrize("url", REFUSED)
def test_a_non_public_address_is_refused(url, private_refused):
    with pytest.raises(urlguard.UrlRefused, match="only sent to public addresses"):
        urlguard.check(url)


def test_localhost_is_refused_through_its_real_resolution(private_refused):
    # The system resolver, not a fake: localhost is 127.0.0.1 and/or ::1.
    with pytest.raises(urlguard.UrlRefused, match=r"'localhost' resolves to .*loopback"):
        urlguard.check("http://localhost/hook")


def test_a_host_refused_if_any_of_its_addresses_is_private(private_refused, fake_dns):
    fake_dns["hooks.example.com"] = ["93.184.215.14", "10.1.2.3"]

    with pytest.raises(urlguard.UrlRefused, match=r"10\.1\.2\.3 \(private\)"):
        urlguard.check("https://hooks.example.com/x")


def test_a_public_host_is_called_at_the_address_that_was_checked(private_refused, fake_dns):
    fake_dns["hooks.example.com"] = ["93.184.215.14"]

    target = urlguard.check("https://hooks.example.com:8443/x")

    assert (target.host, target.port, target.address) == (
        "hooks.example.com",
        8443,
        "93.184.215.14",
    )


@pytest.mark.parametrize(
    "url", ["ftp://93.184.215.14/x", "file:///etc/passwd", "gopher://a.b/", "nope"]
)
def test_only_http_and_https(url, private_refused):
    with pytest.raises(urlguard.UrlRefused, match="valid http:// or https:// URL"):
        urlguard.check(url)


def test_allow_private_lets_loopback_through(allow_private):
    assert urlguard.check("http://127.0.0.1:9/hook").address == "127.0.0.1"


def test_a_host_that_does_not_resolve_yet_may_be_given_but_not_called(private_refused, fake_dns):
    urlguard.url_validate("https://not-yet.example.com/x", field="callback_url")

    with pytest.raises(urlguard.UrlRefused, match="does not resolve"):
        urlguard.delivery_target("https://not-yet.example.com/x")


@pytest.mark.django_db
def test_task_create_refuses_a_private_callback_url_naming_the_field(alice, private_refused):
    with pytest.raises(ValidationError) as refused:
        task_services.task_create(owner=alice, title="t", callback_url="http://10.0.0.5/hook")

    assert list(refused.value.message_dict) == ["callback_url"]
    assert "10.0.0.5 (private)" in refused.value.message_dict["callback_url"][0]


@pytest.mark.django_db
def test_the_rest_create_answers_400_naming_callback_url(alice, client_for, private_refused):
    response = client_for(alice).post(
        "/api/tasks/",
        {"title": "t", "callback_url": "http://169.254.169.254/latest"},
        format="json",
    )

    assert response.status_code == 400, response.content
    assert list(response.json()) == ["callback_url"]
    assert "link-local" in response.json()["callback_url"][0]


@pytest.mark.django_db
def test_the_default_url_is_refused_too(alice, client_for, private_refused):
    response = client_for(alice).put(
        "/api/webhooks/settings/", {"default_url": "http://[::1]:8000/"}, format="json"
    )

    assert response.status_code == 400
    assert "loopback" in response.json()["default_url"][0]


@pytest.mark.django_db(transaction=True)
def test_an_address_that_turned_private_after_create_is_refused_at_delivery(
    alice, receiver, settings, sent_messages
):
    """DNS rebinding: the URL passed when given; by delivery time it resolves to loopback.
    The attempt is recorded as refused and nothing reaches the address."""
    settings.TASKHUB_WEBHOOK_ALLOW_PRIVATE = True
    task = task_services.task_create(owner=alice, title="t", kind="echo", callback_url=receiver.url)
    task_services.task_transition(task_id=task.pk, to="cancelled")
    delivery = WebhookDelivery.objects.get(task=task)
    settings.TASKHUB_WEBHOOK_ALLOW_PRIVATE = False

    delivery = services.delivery_attempt(delivery_id=delivery.pk)

    assert receiver.requests == []
    (attempt,) = delivery.attempt_log.all()
    assert attempt.status_code is None
    assert attempt.error.startswith(
        "refused: The host '127.0.0.1' resolves to 127.0.0.1 (loopback)"
    )
    assert delivery.state == "pending" and delivery.next_attempt_at is not None
