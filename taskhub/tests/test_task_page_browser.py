"""A task's own page (/tasks/<id>/) and the dashboard's links to it, in a real browser.

Headless Chromium against a real Daphne and a real Celery worker on the test database,
as in test_browser.py (whose fixtures and steps this file uses; docs/browser.md says how
to run them).
"""

from __future__ import annotations

import json

import pytest

from devserver import testing
from devserver.testing import wait_until
from taskhub.tests import test_browser
from taskhub.tests.test_browser import CHROMIUM, expect, on_server, sign_in, task_row
from tasks import services as task_services
from tasks.models import Task, TaskStatus

# test_browser.py's fixtures: the browser, a page per user, the web server.
browser = test_browser.browser
open_page = test_browser.open_page
web_url = test_browser.web_url

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_connection_registry"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found"),
]


def task_status(task_id) -> str:
    return Task.objects.values_list("status", flat=True).get(pk=task_id)


def wait_for_status(task_id, status: str) -> None:
    wait_until(lambda: on_server(task_status, task_id) == status, timeout=30, message=status)


def record_task_statuses(page) -> None:
    """Before any page script runs: keep every status the page's badge shows."""
    page.context.add_init_script(
        """window.addEventListener("DOMContentLoaded", () => {
             window.seenStatuses = [];
             new MutationObserver(() => {
               const status = document.body.dataset.taskStatus;
               const seen = window.seenStatuses;
               if (status && seen.at(-1) !== status) seen.push(status);
             }).observe(document.body, {attributes: true});
           });"""
    )


def timeline_statuses(page) -> list[str]:
    return page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.status)")


def test_the_task_page_follows_a_running_task_live_to_its_full_result(
    web_url, celery_worker_process, open_page, alice
):
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")
    record_task_statuses(page)
    task = on_server(
        task_services.task_create,
        owner=alice,
        title="Export the archive",
        description="all of 2026",
        params={"seconds": 4, "steps": 8},
    )

    page.goto(f"{web_url}/tasks/{task.pk}/")

    expect(page.get_by_role("heading", name="Export the archive")).to_be_visible()
    expect(page.locator("#task-description")).to_have_text("all of 2026")
    expect(page.locator("#task-kind")).to_have_text("simulate")
    assert json.loads(page.locator("#task-params").text_content()) == {"seconds": 4, "steps": 8}
    expect(page.locator("#task-status")).to_have_text("completed")
    expect(page.locator("#task-percent")).to_have_text("100%")
    result = json.loads(page.locator("#task-result").text_content())
    assert result == {"steps": 8, "seconds": 4, "message": "simulated 8 steps"}
    expect(page.locator("#task-attempts")).to_contain_text("1")
    # The page saw the run, not only its end: the badge went through in_progress.
    seen = page.evaluate("window.seenStatuses")
    assert "in_progress" in seen and seen[-1] == "completed", seen
    # The timeline: every state once, in order, with the run's progress on in_progress.
    assert timeline_statuses(page) == ["pending", "queued", "in_progress", "completed"]
    expect(page.locator("#timeline li[data-status=in_progress]")).to_contain_text("%")
    # No retry for a completed task.
    expect(page.get_by_role("button", name="Retry")).to_be_hidden()


def test_a_wordcount_result_is_a_small_table(web_url, celery_worker_process, open_page, alice):
    task = on_server(
        task_services.task_create,
        owner=alice,
        title="Count the rhyme",
        kind="wordcount",
        description="the cat and the hat\nthe end",
    )
    wait_for_status(task.pk, TaskStatus.COMPLETED)
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")

    page.goto(f"{web_url}/tasks/{task.pk}/")

    counts = page.get_by_role("table", name="Counts")
    expect(counts.get_by_role("row", name="words 7")).to_be_visible()
    expect(counts.get_by_role("row", name="lines 2")).to_be_visible()
    top = page.get_by_role("table", name="Most common words")
    expect(top.get_by_role("row").nth(1)).to_have_text("the3")
    expect(top.get_by_role("row")).to_have_count(1 + 5)  # the header and 5 distinct words


def test_another_user_gets_a_404_for_the_page(web_url, open_page, alice, bob):
    task = on_server(task_services.task_create, owner=alice, title="Alice's own")
    page = open_page()
    sign_in(page, web_url, bob, "bob-pass-123")

    response = page.goto(f"{web_url}/tasks/{task.pk}/")

    assert response.status == 404
    expect(page.get_by_text("Alice's own")).to_have_count(0)


def test_a_failed_task_is_edited_and_re_run_from_its_page(
    web_url, celery_worker_process, open_page, alice
):
    task = on_server(
        task_services.task_create,
        owner=alice,
        title="Flaky import",
        params={"seconds": 0.2, "steps": 2, "fail_at_step": 1},
    )
    wait_for_status(task.pk, TaskStatus.FAILED)
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")
    page.goto(f"{web_url}/tasks/{task.pk}/")
    expect(page.locator("#task-status")).to_have_text("failed")
    expect(page.locator("#task-error")).to_contain_text("simulated failure at step 1")
    # Retry: the same params, one attempt more, which fails the same way.
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.locator("#task-attempts")).to_contain_text("2")
    expect(page.locator("#task-status")).to_have_text("failed")
    expect(page.locator("#timeline")).to_contain_text("retry requested")

    editor = page.get_by_label("Edit params and re-run (JSON object)")
    # Prefilled with the params the task ran with.
    assert json.loads(editor.input_value()) == {"seconds": 0.2, "steps": 2, "fail_at_step": 1}
    editor.fill("not json")
    page.get_by_role("button", name="Edit & re-run").click()
    expect(page.get_by_text("Params must be a JSON object")).to_be_visible()
    editor.fill('{"seconds": 0.2, "steps": 2}')
    page.get_by_role("button", name="Edit & re-run").click()

    expect(page.locator("#task-status")).to_have_text("completed")
    assert json.loads(page.locator("#task-params").text_content()) == {"seconds": 0.2, "steps": 2}
    expect(page.locator("#timeline")).to_contain_text("re-run with edited params")
    assert timeline_statuses(page) == [
        "pending", "queued", "in_progress", "failed",
        "pending", "queued", "in_progress", "failed",
        "pending", "queued", "in_progress", "completed",
    ]  # fmt: skip
    stored = on_server(Task.objects.get, pk=task.pk)
    assert (stored.params, stored.attempts) == ({"seconds": 0.2, "steps": 2}, 3)


def test_an_automatic_retry_shows_when_and_which_attempt_on_both_pages(
    web_url, celery_worker_process, open_page, alice
):
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")
    task = on_server(
        task_services.task_create,
        owner=alice,
        title="Unreliable upstream",
        params={"seconds": 0.2, "steps": 1, "fail_at_step": 1},
        max_attempts=2,
        retry_backoff=3,
    )

    row = task_row(page, "Unreliable upstream")
    expect(row.get_by_text("(attempt 2 of 2)")).to_be_visible()
    expect(row.get_by_text("retrying in", exact=False)).to_be_visible()
    # Beat's dispatcher (every second in a deployment; none runs here) starts the next
    # attempt once it is due.
    wait_until(
        lambda: on_server(lambda: bool(task_services.dispatch_pending_tasks())),
        timeout=30,
        message="the retry dispatched",
    )
    page.goto(f"{web_url}/tasks/{task.pk}/")
    expect(page.locator("#task-status")).to_have_text("failed")  # the last attempt failed too
    expect(page.locator("#task-attempts")).to_have_text("2 of 2")
    retry_entry = page.locator("#timeline li").filter(has_text="retrying in")
    expect(retry_entry).to_contain_text("(attempt 2 of 2)")
    expect(retry_entry).to_contain_text("simulated failure at step 1")
    assert timeline_statuses(page) == [
        "pending", "queued", "in_progress",
        "pending", "queued", "in_progress", "failed",
    ]  # fmt: skip


def test_the_dashboard_filters_links_and_follows_the_kind(
    web_url, celery_worker_process, open_page, alice
):
    done = on_server(
        task_services.task_create, owner=alice, title="Words", kind="wordcount", description="a b"
    )
    broken = on_server(
        task_services.task_create,
        owner=alice,
        title="Broken run",
        params={"seconds": 0.1, "steps": 1, "fail_at_step": 1},
    )
    wait_for_status(done.pk, TaskStatus.COMPLETED)
    wait_for_status(broken.pk, TaskStatus.FAILED)
    page = open_page()
    sign_in(page, web_url, alice, "alice-pass-123")
    words, failed = task_row(page, "Words"), task_row(page, "Broken run")
    expect(words.locator(".cell-attempts")).to_have_text("1")

    # Filters: the API's ?status= and ?kind=.
    page.get_by_label("Filter by status").select_option("failed")
    expect(words).to_be_hidden()
    expect(failed).to_be_visible()
    page.get_by_label("Filter by status").select_option("")
    page.get_by_label("Filter by kind").select_option("wordcount")
    expect(failed).to_be_hidden()
    expect(words).to_be_visible()
    page.get_by_label("Filter by kind").select_option("simulate")
    expect(words).to_be_hidden()
    expect(failed).to_be_visible()
    page.get_by_label("Filter by kind").select_option("")

    # The params help and defaults follow the form's kind; typed params are kept.
    form_kind = page.locator("#task-kind")
    params = page.get_by_label("Params (JSON object)")
    assert json.loads(params.input_value()) == {"seconds": 3, "steps": 10}
    expect(page.locator("#task-params-help")).to_contain_text("fail_at_step")
    form_kind.select_option("wordcount")
    expect(page.locator("#task-params-help")).to_contain_text("description")
    assert json.loads(params.input_value()) == {}
    form_kind.select_option("echo")
    params.fill('{"mine": 1}')
    form_kind.select_option("simulate")
    assert json.loads(params.input_value()) == {"mine": 1}

    # A notification opens its task's page; so does a title.
    page.get_by_role("button", name="Notifications, 2 unread").click()
    page.get_by_role("link", name="Broken run", exact=False).first.click()
    expect(page).to_have_url(f"{web_url}/tasks/{broken.pk}/")
    expect(page.locator("#task-error")).to_contain_text("simulated failure")
    page.get_by_role("link", name="← All tasks").click()
    task_row(page, "Words").get_by_role("link", name="Words").click()
    expect(page).to_have_url(f"{web_url}/tasks/{done.pk}/")
    expect(page.get_by_role("table", name="Counts")).to_be_visible()


def test_the_task_page_resumes_after_a_web_restart_with_what_happened_meanwhile(
    transactional_db, celery_worker_process, open_page, alice
):
    task = on_server(
        task_services.task_create,
        owner=alice,
        title="Nightly sync",
        params={"seconds": 0.2, "steps": 1, "fail_at_step": 1},
    )
    wait_for_status(task.pk, TaskStatus.FAILED)
    port = testing.free_port_for_a_restarted_server()
    web, base_url = testing.start_daphne(port=port)
    try:
        page = open_page()
        sign_in(page, base_url, alice, "alice-pass-123")
        page.goto(f"{base_url}/tasks/{task.pk}/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#task-status")).to_have_text("failed")
        timeline_reads: list[str] = []
        page.on(
            "request",
            lambda request: "/events/" in request.url and timeline_reads.append(request.url),
        )

        web.stop()
        expect(page.get_by_role("status").filter(has_text="Reconnecting…")).to_be_visible()
        # Meanwhile it is re-run elsewhere (the API, another tab) and completes.
        on_server(
            task_services.task_retry,
            task=on_server(Task.objects.get, pk=task.pk),
            params={"seconds": 0.2, "steps": 1},
        )
        wait_for_status(task.pk, TaskStatus.COMPLETED)
        web, _ = testing.start_daphne(port=port)

        expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
        expect(page.locator("#task-status")).to_have_text("completed")
        assert timeline_statuses(page)[-4:] == ["pending", "queued", "in_progress", "completed"]
        expect(page.locator("#timeline")).to_contain_text("re-run with edited params")
        assert json.loads(page.locator("#task-params").text_content()) == {
            "seconds": 0.2,
            "steps": 1,
        }
        # The timeline came from the resumed event stream, not from reading it again.
        assert timeline_reads == []
    finally:
        web.stop()
