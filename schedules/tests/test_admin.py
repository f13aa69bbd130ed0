"""The admin: operators see, add, edit and delete schedules, with the next five run times."""

from __future__ import annotations

import pytest

from schedules.models import Schedule
from schedules.tests.factories import make_schedule

pytestmark = pytest.mark.django_db

FORM = {
    "cron": "15 7 * * *",
    "every_seconds": "",
    "timezone": "Asia/Tokyo",
    "enabled": "on",
    "kind": "echo",
    "title": "Tokyo morning",
    "description": "",
    "params": "{}",
    "timeout": "",
}


def test_the_list_shows_schedules_with_owner_timing_and_next_run(operator, alice):
    make_schedule(owner=alice, title="Nightly export", cron="0 2 * * *")

    page = operator.get("/admin/schedules/schedule/").content.decode()

    assert "Nightly export" in page and "0 2 * * *" in page and "alice" in page


def test_the_change_form_shows_the_next_five_run_times(operator, alice):
    schedule = make_schedule(owner=alice, cron="30 6 * * *", timezone="Europe/Berlin")

    page = operator.get(f"/admin/schedules/schedule/{schedule.pk}/change/").content.decode()

    assert "Next five run times" in page
    assert page.count("T06:30:00+0") == 5  # 06:30 Berlin time, with its offset


def test_preview_on_the_add_form_shows_the_runs_and_saves_nothing(operator, alice):
    response = operator.post(
        "/admin/schedules/schedule/add/", FORM | {"owner": alice.pk, "preview": "on"}
    )

    assert response.status_code == 200  # the form again, not a redirect
    page = response.content.decode()
    assert "Next five run times if saved now" in page
    assert page.count("T07:15:00+09:00") == 5
    assert Schedule.objects.count() == 0


def test_adding_saves_through_the_service_and_says_when_it_runs(operator, alice):
    response = operator.post("/admin/schedules/schedule/add/", FORM | {"owner": alice.pk},
                             follow=True)  # fmt: skip

    schedule = Schedule.objects.get()
    assert (schedule.owner, schedule.cron, schedule.timezone) == (alice, "15 7 * * *", "Asia/Tokyo")
    assert schedule.next_run_at is not None
    assert "Next five run times: " in response.content.decode()


def test_the_add_form_refuses_bad_values_with_the_services_words(operator, alice):
    response = operator.post(
        "/admin/schedules/schedule/add/",
        FORM | {"owner": alice.pk, "cron": "99 * * * *", "timezone": "Nowhere/Land",
                "kind": "nope"},
    )  # fmt: skip

    page = response.content.decode()
    assert "Not a valid cron expression" in page
    assert "Unknown time zone" in page
    assert "Unknown kind" in page
    assert Schedule.objects.count() == 0


def test_an_edit_goes_through_the_service_and_retimes(operator, alice):
    schedule = make_schedule(owner=alice, cron="0 9 * * *")
    form = FORM | {"cron": "0 21 * * *", "timezone": "UTC"}

    response = operator.post(f"/admin/schedules/schedule/{schedule.pk}/change/", form)

    assert response.status_code == 302, response.content.decode()[:3000]
    schedule.refresh_from_db()
    assert schedule.cron == "0 21 * * *"
    assert schedule.next_run_at.hour == 21


def test_delete_goes_through_the_service(operator, alice):
    schedule = make_schedule(owner=alice)
    operator.post(f"/admin/schedules/schedule/{schedule.pk}/delete/", {"post": "yes"})
    assert not Schedule.objects.exists()
