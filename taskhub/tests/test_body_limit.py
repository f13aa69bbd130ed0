"""A body over MAX_REQUEST_BYTES is refused with 413 and a JSON message that says the
limit (issue 13, S1): before, Django answered 400 with an HTML page."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.django_db


def test_a_body_over_the_limit_answers_413_with_json(client_for, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = json.dumps({"title": "big", "description": "x" * 4096})

    response = client_for(alice).post("/api/tasks/", body, content_type="application/json")

    assert response.status_code == 413
    assert response.json() == {
        "detail": f"The request body is {len(body)} bytes; at most 2048 are accepted."
    }


def test_a_body_within_the_limit_reaches_the_view(client_for, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = json.dumps({"title": "small", "kind": "echo", "params": {}})

    response = client_for(alice).post("/api/tasks/", body, content_type="application/json")

    assert response.status_code == 201


def test_the_legacy_api_gets_the_same_413(client_for, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    body = json.dumps({"title": "big", "description": "x" * 4096})

    response = client_for(alice).post("/task/create", body, content_type="application/json")

    assert response.status_code == 413
