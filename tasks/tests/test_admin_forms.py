"""The admin's "Add task" form and the list's actions, tried as an operator does (issue 14
§3): a bad value is a message on its field, never a 500; each action says what it did."""

from __future__ import annotations

import html
import re

import pytest
from django.conf import settings

from tasks.models import Task, TaskStatus
from tasks.tests.factories import make_task

pytestmark = pytest.mark.django_db

OUT_OF_RANGE = f"Must be between 1 and {settings.TASKHUB_TASK_MAX_TIMEOUT} seconds."

ADD = "/admin/tasks/task/add/"
LIST = "/admin/tasks/task/"


def add_form(alice, **overrides) -> dict:
    form = {"owner": alice.pk, "title": "From admin", "description": "", "kind": "echo",
            "params": "{}", "timeout": 30}  # fmt: skip
    form.update(overrides)
    return form


def field_errors(page: str, field: str) -> list[str]:
    """The messages the change form shows on `field` (Django's errorlist in its row)."""
    row = re.search(rf'<div class="form-row[^"]*field-{field}\b.*?</div>\s*</div>', page, re.S)
    assert row, f"no row for {field}"
    return [
        html.unescape(re.sub(r"<[^>]+>", "", item).strip())
        for item in re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', row.group(0), re.S)
    ]


def messages_shown(page: str) -> list[str]:
    return [
        html.unescape(re.sub(r"<[^>]+>", "", text).strip())
        for text in re.findall(r'<ul class="messagelist">(.*?)</ul>', page, re.S)
        for text in re.findall(r"<li[^>]*>(.*?)</li>", text, re.S)
    ]


def test_the_kind_is_a_choice_of_the_registered_kinds(operator):
    page = operator.get(ADD).content.decode()

    select = re.search(r'<select name="kind"[^>]*>(.*?)</select>', page, re.S)
    assert select, "kind is not a select"
    offered = re.findall(r'<option value="([^"]*)"', select.group(1))
    assert sorted(offered) == sorted(settings.TASKHUB_TASK_PROCESSORS)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", "resize-photos", "Unknown kind 'resize-photos'; known kinds: "),
        ("params", "[1, 2]", "Must be a JSON object."),
        (
            "timeout",
            "999999",
            f"Must be between 1 and {settings.TASKHUB_TASK_MAX_TIMEOUT} seconds.",
        ),
        ("timeout", "0", f"Must be between 1 and {settings.TASKHUB_TASK_MAX_TIMEOUT} seconds."),
    ],
)
def test_an_invalid_value_is_a_message_on_its_field_and_nothing_is_created(
    operator, alice, field, value, message
):
    response = operator.post(ADD, add_form(alice, **{field: value}))

    assert response.status_code == 200
    errors = field_errors(response.content.decode(), field)
    assert any(message in error for error in errors), errors
    assert not Task.objects.exists()


def test_several_invalid_values_each_get_their_own_message(operator, alice):
    response = operator.post(ADD, add_form(alice, params="[1, 2]", timeout="999999"))

    page = response.content.decode()
    assert response.status_code == 200
    assert field_errors(page, "params") == ["Must be a JSON object."]
    assert field_errors(page, "timeout") == [OUT_OF_RANGE]
    assert not Task.objects.exists()


def test_a_valid_add_creates_a_pending_task_of_the_chosen_kind(operator, alice):
    response = operator.post(ADD, add_form(alice, kind="wordcount"))

    assert response.status_code == 302
    task = Task.objects.get()
    assert (task.kind, task.status, task.owner) == ("wordcount", TaskStatus.PENDING, alice)


def test_cancel_says_a_running_task_was_only_asked_to_stop(operator, alice):
    running = make_task(owner=alice, title="running one", status=TaskStatus.IN_PROGRESS)
    waiting = make_task(owner=alice, title="waiting one")

    response = operator.post(
        LIST, {"action": "cancel_tasks", "_selected_action": [running.pk, waiting.pk]}, follow=True
    )

    shown = messages_shown(response.content.decode())
    assert "1 task(s) cancelled." in shown
    assert (
        "1 running task(s): cancel requested; it stops at its next checkpoint "
        "(reload this page to see it cancelled)." in shown
    )
    running.refresh_from_db()
    assert running.status == TaskStatus.IN_PROGRESS  # what the message said: not yet
    assert not any("2 task(s) cancelled" in message for message in shown)


def test_retry_of_a_selection_with_unretryable_tasks_warns_once(operator, alice):
    failed = make_task(owner=alice, title="failed one", status=TaskStatus.FAILED)
    unretryable = [
        make_task(owner=alice, title=f"busy {n}", status=TaskStatus.IN_PROGRESS) for n in range(3)
    ]
    unretryable.append(make_task(owner=alice, title="done one", status=TaskStatus.COMPLETED))

    response = operator.post(
        LIST,
        {"action": "retry_tasks", "_selected_action": [failed.pk, *[t.pk for t in unretryable]]},
        follow=True,
    )

    shown = messages_shown(response.content.decode())
    assert "1 task(s) retried." in shown
    warnings = [message for message in shown if "not retried" in message]
    assert len(warnings) == 1, shown
    assert warnings[0].startswith(
        "4 task(s) not retried: only a failed or cancelled task can be retried: "
    )
    assert "done one (already completed)" in warnings[0]
    assert "busy 0 (in_progress)" in warnings[0]
    assert len(shown) == 2


def test_a_long_refused_selection_names_ten_and_counts_the_rest(operator, alice):
    done = [
        make_task(owner=alice, title=f"done {n:02}", status=TaskStatus.COMPLETED) for n in range(12)
    ]

    response = operator.post(
        LIST, {"action": "cancel_tasks", "_selected_action": [t.pk for t in done]}, follow=True
    )

    [warning] = messages_shown(response.content.decode())
    assert warning.startswith("12 task(s) not cancelled: only an unfinished task can be cancelled")
    assert warning.endswith(" and 2 more.")
