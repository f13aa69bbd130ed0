"""The signature scheme, checked with the verification snippet of docs/webhooks.md."""

from __future__ import annotations

import hashlib
import hmac
import time

from webhooks.signing import sign
from webhooks.tests.conftest import verify_taskhub_signature

SECRET = "whsec_test"
BODY = b'{"id":"e1","type":"task.completed","data":{"task":{"title":"caf\xc3\xa9"}}}'


def test_the_header_is_t_and_v1_an_hmac_sha256_of_timestamp_dot_body():
    header = sign(SECRET, BODY, timestamp=1796083200)

    expected = hmac.new(SECRET.encode(), b"1796083200." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1796083200,v1={expected}"


def test_the_documented_snippet_accepts_what_taskhub_signs():
    now = int(time.time())

    assert verify_taskhub_signature(SECRET, sign(SECRET, BODY, timestamp=now), BODY)


def test_the_snippet_refuses_another_body_another_secret_and_a_stale_timestamp():
    now = int(time.time())
    header = sign(SECRET, BODY, timestamp=now)

    assert not verify_taskhub_signature(SECRET, header, BODY + b" ")
    assert not verify_taskhub_signature("whsec_other", header, BODY)
    old = sign(SECRET, BODY, timestamp=now - 301)
    assert not verify_taskhub_signature(SECRET, old, BODY)
    assert verify_taskhub_signature(SECRET, old, BODY, now=now - 1)


def test_the_snippet_refuses_a_malformed_header():
    for header in ["", "t=1", "v1=abc", "t=x,v1=abc", "garbage"]:
        assert not verify_taskhub_signature(SECRET, header, BODY)
