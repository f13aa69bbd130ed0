"""The schema tells the truth (issue 13, S4): schemathesis generates requests from
/api/schema/ (drf-spectacular) and sends them to the Django app in this process (WSGI, no
server), as a signed-in user with a real JWT, with every check it has (ignored_auth
included): every status code a view can answer is declared, every request the schema
allows is accepted, every request it forbids is refused, every body matches.

SCHEMATHESIS_EXAMPLES sets the examples per operation (100 here and in CI;
`make reliability` asks 1,000).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS

from conftest import access_token_for

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "100"))
ALL_CHECKS = CHECKS.get_all()


# Loaded at collection (pytest-django has set Django up by then): generating the schema
# reads no table. The requests themselves run in the test, on the test database.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture
def fuzz_user(django_user_model):
    return django_user_model.objects.create_user(username="fuzz", password="fuzz-pass-123")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_its_schema_says(case, fuzz_user, transactional_db):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {access_token_for(fuzz_user)}"},
        checks=ALL_CHECKS,
    )


# What the fuzzing found, kept as specs of their own.


@pytest.mark.django_db
@pytest.mark.parametrize("body", [[None, None], "a task", 7, None])
def test_a_create_whose_body_is_not_an_object_is_400_not_500(body, fuzz_user, client_for):
    response = client_for(fuzz_user).post("/api/tasks/", body, format="json")

    assert response.status_code == 400, response.content
