"""The operators' view in a real browser: headless Chromium, a real Daphne, real workers.

An operator signs in to the admin, opens Operations from the index, and watches: a second
worker appears when it starts and goes when it stops; tasks that run move the throughput
chart. Fixtures and the Chromium set-up are test_browser.py's (docs/browser.md).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from devserver import testing
from taskhub.tests import test_browser
from taskhub.tests.test_browser import CHROMIUM, expect, on_server
from tasks import services
from tasks.models import TaskStatus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_connection_registry"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (docs/browser.md)"),
]

PASSWORD = "operator-pass-1"

# test_browser.py's fixtures: Chromium after every other fixture, a page that fails the
# test on any JavaScript error.
browser = test_browser.browser
open_page = test_browser.open_page


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_superuser("ops", "ops@example.com", PASSWORD)


@pytest.fixture
def first_worker(transactional_db, purge_broker):
    process = testing.start_worker(node=f"first-{uuid.uuid4().hex[:6]}@test", concurrency=1)
    yield process
    process.stop()


def worker_rows(page: Any) -> Any:
    return page.locator("#workers-body tr[data-worker]")


def test_the_operator_sees_workers_come_and_go_and_the_throughput_chart_move(
    daphne_server, staff, alice, first_worker, open_page
):
    base_url = daphne_server
    page = open_page()
    page.goto(f"{base_url}/admin/")
    page.get_by_label("Username").fill(staff.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Workers, queues and throughput, live").click()
    expect(page).to_have_url(f"{base_url}/admin/operations/")
    expect(page.locator("#operations")).to_have_attribute("data-ready", "true")
    expect(page.get_by_role("status")).to_have_text("Live")

    first = first_worker.args[first_worker.args.index("-n") + 1]
    expect(worker_rows(page)).to_have_count(1)
    expect(page.locator(f'#workers-body tr[data-worker="{first}"] .ops-concurrency')).to_have_text(
        "1"
    )

    second_name = f"second-{uuid.uuid4().hex[:6]}@test"
    second = on_server(testing.start_worker, node=second_name, concurrency=3)
    try:
        row = page.locator(f'#workers-body tr[data-worker="{second_name}"]')
        expect(row).to_be_visible()
        expect(row.locator(".ops-concurrency")).to_have_text("3")
        expect(worker_rows(page)).to_have_count(2)
    finally:
        second.stop()
    expect(row).to_have_count(0)
    expect(worker_rows(page)).to_have_count(1)

    chart = page.locator("#throughput-chart")
    expect(chart.locator("canvas")).to_be_visible()
    before = chart.get_attribute("data-total")
    tasks = on_server(
        lambda: [services.task_create(owner=alice, title=f"t{i}", kind="echo") for i in range(3)]
    )
    # Three started and three finished: the chart's data (what uPlot draws) grows by six.
    expect(chart).to_have_attribute("data-total", str(int(before) + 6))
    finished = page.evaluate(
        "() => window.opsCharts['throughput-chart'].data[2].reduce((a, b) => a + b, 0)"
    )
    assert finished >= 3
    assert on_server(lambda: {t.__class__.objects.get(pk=t.pk).status for t in tasks}) == {
        TaskStatus.COMPLETED
    }
