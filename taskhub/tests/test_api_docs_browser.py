"""The API's documentation pages in a real browser, on a network with no CDN (issue 14 §4).

Headless Chromium (devserver/chromium.py, as taskhub/tests/test_browser.py) against a real
Daphne. Every request that leaves the server is refused, as on a closed network: the pages
must render from the project's own static files (drf_spectacular_sidecar).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devserver.chromium import CHROMIUM, CHROMIUM_ARGS

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing (pip install -r requirements-dev.txt)"
)
expect = playwright_api.expect

REDOCLY_FOOTER_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found"),
]


@pytest.fixture
def closed_network_page(daphne_server) -> Iterator[tuple[Any, list[str]]]:
    """A page whose requests to anywhere but the test server fail; the list of those."""
    refused: list[str] = []

    def refuse(route: Any) -> None:
        refused.append(route.request.url)
        route.abort()

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.route(lambda url: not url.startswith(daphne_server), refuse)
        yield page, refused
        browser.close()


def test_swagger_ui_lists_the_operations_from_our_own_files(daphne_server, closed_network_page):
    page, refused = closed_network_page

    page.goto(f"{daphne_server}/api/docs/")

    operation = page.locator(".opblock").filter(has_text="/api/tasks/")
    expect(operation.first).to_be_visible(timeout=20_000)
    assert page.locator(".opblock").count() > 10
    expect(page.locator(".opblock-summary-method").first).to_be_visible()
    assert refused == []


def test_redoc_lists_the_operations_from_our_own_files(daphne_server, closed_network_page):
    page, refused = closed_network_page

    page.goto(f"{daphne_server}/api/redoc/")

    expect(page.get_by_text("TaskHub API").first).to_be_visible(timeout=20_000)
    expect(page.locator("[data-section-id^='tag/']").first).to_be_attached()
    assert page.locator("[data-section-id^='operation/']").count() > 10
    # The one request that leaves: the "API docs by Redocly" footer's logo, built into
    # ReDoc's bundle; ReDoc drops the image when it fails to load.
    assert set(refused) <= {REDOCLY_FOOTER_LOGO}
