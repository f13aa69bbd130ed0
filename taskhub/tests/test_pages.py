"""The browser page's server side: sign-in, sign-up, the dashboard shell and its static files.

What the page does once loaded is tested in a real browser (test_browser.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.core.management import call_command

pytestmark = pytest.mark.django_db

STATIC_FILES = (
    "taskhub/dashboard.js",
    "taskhub/page.js",
    "taskhub/protocol-client.js",
    "taskhub/dashboard.css",
)


def test_an_anonymous_visitor_is_sent_to_the_login_page(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_the_login_page_links_to_sign_up(client):
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    assert b'href="/accounts/signup/"' in response.content
    assert b'<label for="id_username">Username</label>' in response.content


def test_signing_up_creates_the_user_signs_them_in_and_opens_the_dashboard(client):
    response = client.post(
        "/accounts/signup/",
        {"username": "erin", "password1": "erin-pass-9731", "password2": "erin-pass-9731"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert User.objects.get(username="erin").check_password("erin-pass-9731")
    assert client.get("/").status_code == 200


def test_a_bad_sign_up_shows_the_errors_and_creates_nobody(client, alice):
    response = client.post(
        "/accounts/signup/",
        {"username": "ALICE", "password1": "short", "password2": "other"},
    )

    assert response.status_code == 200
    assert b'aria-invalid="true"' in response.content
    assert b"already exists" in response.content
    assert User.objects.filter(username__iexact="alice").count() == 1


def test_signing_in_with_the_form_opens_the_dashboard(client, alice):
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-pass-123", "next": "/"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/"


def test_the_dashboard_hands_the_script_its_config_as_json_and_sets_the_csrf_cookie(client, alice):
    client.force_login(alice)

    response = client.get("/")

    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    match = re.search(
        rb'<script id="taskhub-config" type="application/json">(.*?)</script>', response.content
    )
    config = json.loads(match.group(1))
    assert config["user"] == {"id": alice.pk, "username": "alice"}
    assert config["chatRoom"] == "general"
    assert "simulate" in config["kinds"]


def test_the_dashboard_gets_the_state_machine_s_status_sets_from_the_server(client, alice):
    # Spelled out here on purpose: this checks the contract from outside, so it does not
    # import the constants (notifications.protocol, tasks.models) it checks.
    client.force_login(alice)
    content = client.get("/").content
    config = json.loads(
        re.search(
            rb'<script id="taskhub-config" type="application/json">(.*?)</script>', content
        ).group(1)
    )
    assert config["statuses"] == {
        "all": ["pending", "queued", "in_progress", "completed", "failed", "cancelled"],
        "terminal": ["cancelled", "completed", "failed"],
        "cancellable": ["in_progress", "pending", "queued"],
        "retryable": ["cancelled", "failed"],
    }
    # ...and the script keeps no set of statuses of its own that could drift from them.
    script = (Path(__file__).parents[1] / "static/taskhub/dashboard.js").read_text()
    statuses = "pending|queued|in_progress|completed|failed|cancelled"
    assert re.findall(rf"new Set\(\[[^\]]*[\"'](?:{statuses})[\"'][^\]]*\]\)", script) == []


def test_a_username_with_markup_is_escaped_in_the_page(client, django_user_model):
    user = django_user_model.objects.create_user(username="<b>x", password="p-4829-pass")
    client.force_login(user)

    content = client.get("/").content

    assert b"<b>x" not in content
    assert b"&lt;b&gt;x" in content  # the header
    assert b'"\\u003Cb\\u003Ex"' in content  # the JSON config (json_script escapes < and >)


def test_the_page_loads_nothing_from_another_origin(client, alice):
    client.force_login(alice)

    content = client.get("/").content.decode()

    sources = re.findall(r'(?:src|href)="([^"]+)"', content)
    assert sources, "expected the page to load its script and stylesheet"
    assert [s for s in sources if s.startswith(("http:", "https:", "//"))] == []
    assert '<script type="module" src="/static/taskhub/dashboard.js">' in content


def test_the_static_files_are_found_in_development(settings):
    for name in STATIC_FILES:
        assert finders.find(name), f"{name} is not found by the staticfiles finders"


@pytest.mark.parametrize("debug", [True, False])
@pytest.mark.parametrize("path", ["/static/", "/static/taskhub/no-such-file.js"])
def test_a_static_url_that_names_no_file_is_a_404_with_a_message(client, settings, debug, path):
    # Under DEBUG (`make run`), ServeStatic raised for it: a 500 and a traceback in the log.
    settings.DEBUG = debug

    response = client.get(path)

    assert response.status_code == 404
    assert response.json()["detail"]
    if debug:  # the development answer says where it looked
        assert "did not find the file" in response.json()["detail"]


def test_collectstatic_gathers_the_page_files_for_production(settings, tmp_path: Path):
    settings.STATIC_ROOT = tmp_path

    call_command("collectstatic", interactive=False, verbosity=0)

    for name in STATIC_FILES:
        assert (tmp_path / name).is_file(), f"{name} missing from STATIC_ROOT"
