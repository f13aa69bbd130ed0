"""One home for the rules of a new task (services.task_validate_run): REST, the admin and
the service itself refuse the same input with the same words (gRPC shares REST's
serializer: tasks/tests/test_grpc.py)."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from tasks import services
from tasks.models import Task

pytestmark = pytest.mark.django_db

REFUSED = [
    pytest.param({"kind": "teleport"}, "kind", id="unknown-kind"),
    pytest.param({"params": [1, 2]}, "params", id="params-not-an-object"),
    pytest.param({"params": {"x": "y" * 20000}}, "params", id="params-too-big"),
    pytest.param({"timeout": 0}, "timeout", id="timeout-zero"),
    pytest.param({"timeout": 10**6}, "timeout", id="timeout-too-long"),
]


def service_words(fields: dict, field: str) -> list[str]:
    run = {"kind": "echo", "params": {}, "timeout": 30, **fields}
    with pytest.raises(ValidationError) as refused:
        services.task_validate_run(**run)
    return refused.value.message_dict[field]


@pytest.mark.parametrize(("fields", "field"), REFUSED)
def test_rest_refuses_with_the_services_words(alice, fields, field):
    api = APIClient()
    api.force_authenticate(alice)

    response = api.post(
        "/api/tasks/", {"title": "t", "kind": "echo", "timeout": 30, **fields}, format="json"
    )

    assert response.status_code == 400
    assert response.json()[field] == service_words(fields, field)


@pytest.mark.parametrize(("fields", "field"), REFUSED)
def test_the_admin_refuses_with_the_services_words(alice, operator, fields, field):
    form = {"owner": alice.pk, "title": "t", "description": "", "kind": "echo",
            "params": "{}", "timeout": 30}  # fmt: skip
    form.update({k: json.dumps(v) if k == "params" else v for k, v in fields.items()})

    response = operator.post("/admin/tasks/task/add/", form)

    assert response.status_code == 200
    page = response.content.decode()
    for message in service_words(fields, field):
        assert message.replace("'", "&#x27;") in page
    assert not Task.objects.exists()


def test_a_bad_title_and_a_bad_kind_are_named_together(alice):
    api = APIClient()
    api.force_authenticate(alice)

    response = api.post("/api/tasks/", {"title": "", "kind": "teleport"}, format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"title", "kind"}
