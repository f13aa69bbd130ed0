"""Settings come from the environment; bad values fail at start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

MANAGE = [sys.executable, str(settings.BASE_DIR / "manage.py")]


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}
    return subprocess.run(
        [*MANAGE, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=settings.BASE_DIR,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "0"}, "SECRET_KEY must be set when DEBUG is off"),
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DEBUG": "1", "DISPATCH_INTERVAL": "fast"}, "DISPATCH_INTERVAL must be a number"),
        ({"DEBUG": "1", "TASK_DEFAULT_TIMEOUT": "0"}, "TASK_DEFAULT_TIMEOUT must be >= 1"),
        ({"DEBUG": "1", "TASK_PROCESSORS": "nopath"}, "TASK_PROCESSORS entries are kind=dotted"),
        ({"DEBUG": "1", "DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must point at PostgreSQL"),
        ({"DEBUG": "1", "THROTTLE_USER": "lots"}, "THROTTLE_USER must be a rate like 600/min"),
        ({"DEBUG": "1", "THROTTLE_ANON": "0/min"}, "THROTTLE_ANON must be a rate like 600/min"),
        ({"DEBUG": "1", "LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of DEBUG, INFO"),
        # Past what the column holds: a create the limit allowed would fail in the database.
        ({"DEBUG": "1", "TASK_MAX_ATTEMPTS": "40000"}, "TASK_MAX_ATTEMPTS must be <= 32767"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(env, message):
    result = run_manage("check", **env)

    assert result.returncode != 0
    assert message in result.stderr


def test_check_deploy_passes_with_a_production_environment():
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY="x7!" + "k2p9QzLr8vW4mN6bT1cY3hJ5dF0gS" * 2,
        ALLOWED_HOSTS="taskhub.example.com",
        SECURE_SSL_REDIRECT="1",
        SECURE_HSTS_SECONDS="31536000",
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKHUB_STOP_TIMEOUT": "soon"}, "TASKHUB_STOP_TIMEOUT must be a number of seconds > 0"),
        ({"WEB_INSTANCES": "0"}, "WEB_INSTANCES must be between 1 and 32, got 0"),
        ({"WORKERS": "two"}, "WORKERS must be a whole number, got 'two'"),
    ],
)
def test_a_bad_launcher_setting_stops_make_run_before_anything_starts(env, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "devserver.launcher", "run"],
        env={**os.environ, "TASKHUB_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=settings.BASE_DIR,
    )

    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "launcher.lock").exists()  # nothing was started
