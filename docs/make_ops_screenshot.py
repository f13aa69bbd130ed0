"""Make docs/operations.png: the operators' view of a running TaskHub with work going on.

    make run                                         # in one terminal (web + workers + beat)
    .venv/bin/python manage.py createsuperuser       # once: a staff account
    .venv/bin/python docs/make_ops_screenshot.py --admin <name>   # asks for its password
                                                     # (or OPS_ADMIN_PASSWORD); --url if not :8000

It signs up a demo user through the page (docs/make_screenshot.py's steps), gives them
tasks that complete, fail, and run for a while, signs in to the admin as the staff
account, opens Operations and waits until the workers show active tasks and the charts
have data, then saves the screenshot and cancels what it left running.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshot import create_task, sign_up  # the dashboard screenshot's steps

from devserver.chromium import CHROMIUM, CHROMIUM_ARGS

LONG_RUNNING = ("Nightly backup", "Re-index search")
# The view refreshes every 3 s and a few runs must end first.
expect.set_options(timeout=60_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="TaskHub's base URL")
    parser.add_argument("--out", default=str(Path(__file__).with_name("operations.png")))
    parser.add_argument("--admin", required=True, help="a staff account's username")
    parser.add_argument("--chromium", default=str(CHROMIUM))
    args = parser.parse_args()
    password = os.environ.get("OPS_ADMIN_PASSWORD") or getpass.getpass(f"{args.admin}'s password: ")
    base_url = args.url.rstrip("/")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        user = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        user.set_default_timeout(30_000)
        sign_up(user, base_url, f"maria-{secrets.token_hex(2)}")
        # Some history for the charts and the percentiles: quick runs of two kinds, a
        # failure, and two long runs that keep the workers busy while the picture is taken.
        for n in range(6):
            create_task(user, f"Resize photo batch {n + 1}", {"seconds": 1 + n % 3, "steps": 4})
        user.get_by_label("Kind", exact=True).select_option("wordcount")
        for n in range(4):
            create_task(user, f"Count words, chapter {n + 1}", {}, description="word " * (n + 3))
        user.get_by_label("Kind", exact=True).select_option("simulate")
        create_task(user, "Import customer CSV", {"seconds": 2, "steps": 4, "fail_at_step": 3})
        for title in LONG_RUNNING:
            create_task(user, title, {"seconds": 600, "steps": 600})

        page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{base_url}/admin/login/?next=/admin/")
        page.get_by_label("Username").fill(args.admin)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("link", name="Workers, queues and throughput, live").click()
        expect(page.get_by_role("status")).to_have_text("Live")
        for title in LONG_RUNNING:
            expect(page.locator("#workers-body a", has_text=title).first).to_be_visible()
        expect(
            page.locator("#unsuccessful-body a", has_text="Import customer CSV").first
        ).to_be_visible()
        expect(page.locator("#throughput-chart")).not_to_have_attribute("data-total", "0")
        expect(page.locator("#kinds-body tr", has_text="wordcount")).to_be_visible()
        # One more refresh, so the long runs show some heartbeat and the charts their ends.
        time.sleep(4)
        page.screenshot(path=args.out, full_page=True)
        print(f"saved {args.out}")
        # Leave nothing running on the demo server: cancel from the view, as an operator.
        for title in LONG_RUNNING:
            cancel_from_view(page, title)
        browser.close()


def cancel_from_view(page: Any, title: str) -> None:
    page.get_by_role("button", name=f"Cancel task {title}").first.click()
    expect(page.get_by_role("alert")).to_contain_text("cancel requested")


if __name__ == "__main__":
    main()
