"""/api/schedules/: the owner's CRUD, the preview, and the errors a client gets."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest

from schedules.models import Schedule
from schedules.tests.factories import make_schedule

pytestmark = pytest.mark.django_db

CRON_BODY = {
    "cron": "0 9 * * 1-5",
    "timezone": "Europe/Berlin",
    "task": {"kind": "echo", "title": "Morning report", "params": {"to": "team"}},
}


def test_alice_creates_a_cron_schedule_and_sees_its_next_five_runs(alice, client_for):
    response = client_for(alice).post("/api/schedules/", CRON_BODY, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["cron"], body["every_seconds"], body["timezone"], body["enabled"]) == (
        "0 9 * * 1-5",
        None,
        "Europe/Berlin",
        True,
    )
    assert body["task"] == {
        "kind": "echo",
        "title": "Morning report",
        "description": "",
        "params": {"to": "team"},
        "timeout": None,
    }
    runs = [datetime.fromisoformat(text) for text in body["next_runs"]]
    assert len(runs) == 5 and runs == sorted(runs)
    # 09:00 Berlin time on weekdays, shown with Berlin's offset.
    assert all((run.hour, run.minute) == (9, 0) and run.weekday() < 5 for run in runs)
    assert all(run.utcoffset() in (timedelta(hours=1), timedelta(hours=2)) for run in runs)
    assert Schedule.objects.get(pk=body["id"]).owner == alice


def test_an_interval_schedule_runs_every_n_seconds(alice, client_for):
    response = client_for(alice).post(
        "/api/schedules/",
        {"every_seconds": 600, "task": {"title": "poll", "kind": "echo"}},
        format="json",
    )

    assert response.status_code == 201, response.content
    runs = [datetime.fromisoformat(text) for text in response.json()["next_runs"]]
    assert [b - a for a, b in itertools.pairwise(runs)] == [timedelta(seconds=600)] * 4


def test_the_preview_shows_the_next_five_runs_without_saving(alice, client_for):
    response = client_for(alice).post(
        "/api/schedules/preview/",
        {"cron": "30 2 * * *", "timezone": "America/New_York"},
        format="json",
    )

    assert response.status_code == 200, response.content
    runs = [datetime.fromisoformat(text) for text in response.json()["next_runs"]]
    assert len(runs) == 5 and all((run.hour, run.minute) == (2, 30) for run in runs)
    assert Schedule.objects.count() == 0


def test_the_preview_refuses_what_a_create_would(alice, client_for):
    response = client_for(alice).post(
        "/api/schedules/preview/", {"cron": "every day", "timezone": "UTC"}, format="json"
    )
    assert response.status_code == 400
    assert "cron" in response.json()


def test_alice_lists_edits_disables_and_deletes_her_schedule(alice, client_for):
    client = client_for(alice)
    created = client.post("/api/schedules/", CRON_BODY, format="json").json()
    url = f"/api/schedules/{created['id']}/"

    listed = client.get("/api/schedules/").json()
    assert [s["id"] for s in listed["results"]] == [created["id"]]

    edited = client.patch(url, {"task": {"title": "Evening report"}, "cron": "0 18 * * *"},
                          format="json")  # fmt: skip
    assert edited.status_code == 200, edited.content
    assert edited.json()["task"]["title"] == "Evening report"
    assert edited.json()["task"]["kind"] == "echo"  # the rest of the template stays
    assert datetime.fromisoformat(edited.json()["next_runs"][0]).hour == 18

    switched = client.patch(url, {"every_seconds": 3600}, format="json")
    assert switched.status_code == 200, switched.content
    assert (switched.json()["cron"], switched.json()["every_seconds"]) == ("", 3600)

    disabled = client.patch(url, {"enabled": False}, format="json")
    assert disabled.json()["enabled"] is False
    assert disabled.json()["next_runs"] == []

    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404


def test_bob_gets_404_for_alices_schedule_and_changes_nothing(alice, bob, client_for):
    schedule = make_schedule(owner=alice, title="alice's secret")
    url = f"/api/schedules/{schedule.pk}/"
    bob_client = client_for(bob)

    for method, body in [("get", None), ("patch", {"enabled": False}), ("put", CRON_BODY),
                         ("delete", None)]:  # fmt: skip
        response = getattr(bob_client, method)(url, body, format="json")
        assert response.status_code == 404, (method, response.content)
        assert "secret" not in response.content.decode()

    assert bob_client.get("/api/schedules/").json()["results"] == []
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.title == "alice's secret"


def test_anonymous_gets_401(client_for):
    assert client_for(None).get("/api/schedules/").status_code == 401


@pytest.mark.parametrize(
    "change, field",
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "", "every_seconds": None}, "cron"),
        ({"every_seconds": 60}, "every_seconds"),  # and the body's cron: both
        ({"cron": "", "every_seconds": 1}, "every_seconds"),  # under the minimum
    ],
)
def test_bad_timing_is_a_400_naming_the_field(alice, client_for, change, field):
    response = client_for(alice).post("/api/schedules/", CRON_BODY | change, format="json")

    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert Schedule.objects.count() == 0


def test_a_bad_template_gets_the_words_a_task_create_gets(alice, client_for):
    client = client_for(alice)
    template = {"title": "x", "kind": "nope", "params": [1], "timeout": 10**9}
    schedule = client.post("/api/schedules/", CRON_BODY | {"task": template}, format="json")
    task = client.post("/api/tasks/", template, format="json")

    assert schedule.status_code == task.status_code == 400
    assert schedule.json() == {"task": task.json()}


def test_a_missing_template_title_is_a_400(alice, client_for):
    response = client_for(alice).post(
        "/api/schedules/", {"cron": "* * * * *", "task": {"kind": "echo"}}, format="json"
    )
    assert response.status_code == 400
    assert "title" in response.json()["task"]


def test_a_user_may_have_only_so_many_schedules(alice, client_for, settings):
    settings.TASKHUB_SCHEDULE_MAX_PER_USER = 2
    client = client_for(alice)
    assert [client.post("/api/schedules/", CRON_BODY, format="json").status_code
            for _ in range(3)] == [201, 201, 400]  # fmt: skip
    assert Schedule.objects.count() == 2


def test_an_edit_that_breaks_the_schedule_is_refused_and_changes_nothing(alice, client_for):
    schedule = make_schedule(owner=alice, cron="0 9 * * *")
    response = client_for(alice).patch(
        f"/api/schedules/{schedule.pk}/", {"cron": "0 25 * * *"}, format="json"
    )
    assert response.status_code == 400 and "cron" in response.json()
    schedule.refresh_from_db()
    assert schedule.cron == "0 9 * * *"
