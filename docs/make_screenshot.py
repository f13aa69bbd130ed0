"""Make docs/dashboard.png and docs/task_page.png: a running TaskHub with a little going on.

    make run                                   # in one terminal (web + worker + beat)
    .venv/bin/python docs/make_screenshot.py   # in another; --url if not :8000

It signs up two fresh demo users through the page, gives one of them tasks that end in
every way (completed, failed, cancelled, one still running), lets them chat, and saves
the dashboard; then it edits and re-runs the failed task from the task's own page and
saves that. It drives Debian's /usr/bin/chromium with Playwright (no browser download).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect, sync_playwright

# Run as a script from the project root: make the project importable for its one constant.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from devserver.chromium import CHROMIUM, CHROMIUM_ARGS

PASSWORD = "demo-" + secrets.token_hex(8)


def sign_up(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()


def create_task(page: Any, title: str, params: dict[str, Any], description: str = "") -> None:
    page.get_by_label("Title").fill(title)
    page.get_by_label("Description").fill(description)
    page.get_by_label("Params (JSON object)").fill(json.dumps(params))
    page.get_by_role("button", name="Create task").click()
    expect(page.locator("#tasks-body tr", has_text=title).first).to_be_visible()


def say(page: Any, text: str) -> None:
    page.get_by_label("Message to #general").fill(text)
    page.get_by_label("Message to #general").press("Enter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="TaskHub's base URL")
    parser.add_argument("--out", default=str(Path(__file__).with_name("dashboard.png")))
    parser.add_argument("--task-out", default=str(Path(__file__).with_name("task_page.png")))
    parser.add_argument("--chromium", default=str(CHROMIUM))
    args = parser.parse_args()
    base_url = args.url.rstrip("/")
    suffix = secrets.token_hex(2)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
        page.set_default_timeout(30_000)
        friend = browser.new_context().new_page()
        friend.set_default_timeout(30_000)
        sign_up(page, base_url, f"maria-{suffix}")
        sign_up(friend, base_url, f"tom-{suffix}")

        create_task(page, "Resize holiday photos", {"seconds": 2, "steps": 8})
        page.get_by_label("Kind", exact=True).select_option("wordcount")
        create_task(
            page,
            "Count words in the report",
            {},
            description="The quarterly report: revenue up, costs down, the team grew.",
        )
        page.get_by_label("Kind", exact=True).select_option("simulate")
        create_task(page, "Import customer CSV", {"seconds": 2, "steps": 4, "fail_at_step": 3})
        create_task(page, "Nightly backup", {"seconds": 600, "steps": 600})
        create_task(page, "Re-index search", {"seconds": 600, "steps": 600})
        create_task(page, "Render video preview", {"seconds": 90, "steps": 90})

        backup = page.locator("#tasks-body tr", has_text="Nightly backup")
        expect(backup.locator(".badge")).to_have_text("in progress")
        backup.get_by_role("button", name="Cancel task Nightly backup").click()
        expect(backup.locator(".badge")).to_have_text("cancelled")
        reindex = page.locator("#tasks-body tr", has_text="Re-index search")
        reindex.get_by_role("button", name="Cancel task Re-index search").click()
        expect(reindex.locator(".badge")).to_have_text("cancelled")
        row = page.locator("#tasks-body tr", has_text="Resize holiday photos")
        expect(row.locator(".badge")).to_have_text("completed")
        row = page.locator("#tasks-body tr", has_text="Import customer CSV")
        expect(row.locator(".badge")).to_have_text("failed")

        say(friend, "Morning! Is the photo resize done?")
        expect(page.get_by_text("Is the photo resize done?")).to_be_visible()
        say(page, "Yes, all 8 steps. The CSV import failed, looking at it now.")
        expect(friend.get_by_text("looking at it now")).to_be_visible()
        # The server passes one typing hint per user per 2 s; the last one went with "say".
        time.sleep(2.2)
        friend.get_by_label("Message to #general").press_sequentially("Thanks")
        expect(page.get_by_text("is typing…")).to_be_visible()

        page.get_by_label("Search your tasks").fill("report")
        page.get_by_label("Search your tasks").press("Enter")
        expect(page.locator("#search-list li").first).to_be_visible()
        # Let the running task show some progress, then take the picture.
        time.sleep(1.5)
        page.screenshot(path=args.out, full_page=True)
        print(f"saved {args.out}")
        # Leave nothing running on the demo server.
        page.locator("#tasks-body tr", has_text="Render video preview").get_by_role(
            "button", name="Cancel task Render video preview"
        ).click()

        # The failed import's own page, after an edit and re-run: params, result, timeline.
        page.locator("#tasks-body tr", has_text="Import customer CSV").get_by_role(
            "link", name="Import customer CSV"
        ).click()
        expect(page.locator("#task-status")).to_have_text("failed")
        page.get_by_label("Edit params and re-run (JSON object)").fill(
            json.dumps({"seconds": 2, "steps": 4})
        )
        page.get_by_role("button", name="Edit & re-run").click()
        expect(page.locator("#task-status")).to_have_text("completed")
        page.screenshot(path=args.task_out, full_page=True)
        print(f"saved {args.task_out}")
        browser.close()


if __name__ == "__main__":
    main()
