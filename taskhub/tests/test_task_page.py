"""A task's own page, /tasks/<id>/ (docs/browser.md), on the server side: who may open it
and what the script is handed. What the page shows is test_task_page_browser.py's."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tasks import services

pytestmark = pytest.mark.django_db


def page_config(content: bytes) -> dict:
    match = re.search(
        rb'<script id="taskhub-config" type="application/json">(.*?)</script>', content
    )
    assert match, "no taskhub-config on the page"
    return json.loads(match.group(1))


def test_the_owner_opens_the_task_page_with_the_task_named_and_its_id_handed_to_the_script(
    client, alice
):
    task = services.task_create(owner=alice, title="Count <b>words</b>", kind="wordcount")
    client.force_login(alice)

    response = client.get(f"/tasks/{task.pk}/")

    assert response.status_code == 200
    assert response.cookies.get("csrftoken")
    assert b"Count &lt;b&gt;words&lt;/b&gt;" in response.content  # the title, escaped
    config = page_config(response.content)
    assert config["taskId"] == str(task.pk)
    assert config["user"]["username"] == "alice"
    assert b"taskhub/task_page.js" in response.content


def test_bob_gets_a_404_for_alice_s_task_as_for_one_that_does_not_exist(client, alice, bob):
    task = services.task_create(owner=alice, title="Private")
    client.force_login(bob)

    assert client.get(f"/tasks/{task.pk}/").status_code == 404
    assert client.get(f"/tasks/{uuid.uuid4()}/").status_code == 404


def test_an_anonymous_visitor_is_sent_to_sign_in_first(client, alice):
    task = services.task_create(owner=alice, title="Private")

    response = client.get(f"/tasks/{task.pk}/")

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/tasks/{task.pk}/"


def test_the_pages_get_each_kind_s_params_help_and_defaults(client, alice, settings):
    settings.TASKHUB_TASK_PROCESSORS = {
        **settings.TASKHUB_TASK_PROCESSORS,
        "bare": "taskhub.tests.task_page_kinds.bare",  # no declared help: its docstring
    }
    client.force_login(alice)

    forms = page_config(client.get("/").content)["kindForms"]

    assert forms["simulate"]["defaults"] == {"seconds": 3, "steps": 10}
    assert "fail_at_step" in forms["simulate"]["help"]
    assert forms["wordcount"]["defaults"] == {}
    assert "description" in forms["wordcount"]["help"]
    assert forms["echo"]["defaults"] == {"message": "hello"}
    assert forms["bare"] == {"help": "A processor that declares nothing.", "defaults": {}}
