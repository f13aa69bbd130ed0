"""No key from the repository signs anything, and no listener is wider than HOST.

An attacker who can reach the machine must not be able to sign a token: a development
run makes its own random key (kept in SECRET_KEY_FILE), publicly known keys are refused
in every mode, and a token signed with any key but this run's gets 401 on REST, 4401 on
the WebSocket and UNAUTHENTICATED on gRPC. gRPC, like the web server, listens on
loopback unless the operator says otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import secrets
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import jwt
import psutil
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from devserver import testing
from taskhub import secret_key
from taskhub.tests.test_settings import run_manage
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.tests.test_grpc import start_grpcserver

# What settings.py fell back to before, and what docker-compose.yml shipped: both public.
OLD_PUBLIC_KEY = "insecure-development-key-do-not-use-in-production"
OLD_COMPOSE_KEY = "change-me-in-production-0123456789abcdefghijklmnopqrstuvwxyz"


def forged_access_token(user, key: str) -> str:
    """A well-formed access token for `user`, with the claims this server puts in its
    own, but signed with `key` instead of this run's SECRET_KEY."""
    claims = dict(AccessToken.for_user(user).payload)
    return jwt.encode(claims, key, algorithm="HS256")


FORGING_KEYS = pytest.mark.parametrize(
    "key",
    [OLD_PUBLIC_KEY, OLD_COMPOSE_KEY, secrets.token_urlsafe(50)],
    ids=["the-old-public-key", "the-old-compose-key", "another-runs-key"],
)


# --- The key itself ----------------------------------------------------------------------


def test_this_run_signs_with_neither_public_key():
    assert not secret_key.is_known_public(settings.SECRET_KEY)
    assert settings.SECRET_KEY not in (OLD_PUBLIC_KEY, OLD_COMPOSE_KEY)


def test_a_development_key_is_made_once_private_and_reused(tmp_path):
    key_file = tmp_path / "data" / "secret_key"

    first = secret_key.load_or_create(key_file)
    second = secret_key.load_or_create(key_file)

    assert first == second
    assert len(first) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not secret_key.is_known_public(first)
    assert secret_key.load_or_create(tmp_path / "another-run" / "secret_key") != first


def test_processes_starting_together_all_get_the_same_new_key(tmp_path):
    key_file = tmp_path / "secret_key"
    code = (
        "import sys; from pathlib import Path; from taskhub import secret_key; "
        "print(secret_key.load_or_create(Path(sys.argv[1])))"
    )
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(key_file)],
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    keys = {starter.communicate(timeout=60)[0].strip() for starter in starters}

    assert keys == {key_file.read_text().strip()}
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temporary left over


def settings_key(**env: str) -> subprocess.CompletedProcess[str]:
    return run_manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
        **env,
    )


def test_a_development_run_without_secret_key_keeps_its_key_across_restarts(tmp_path):
    key_file = tmp_path / "secret_key"

    first = settings_key(DEBUG="1", SECRET_KEY_FILE=str(key_file))
    second = settings_key(DEBUG="1", SECRET_KEY_FILE=str(key_file))

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == second.stdout.strip() == key_file.read_text().strip()


@pytest.mark.parametrize("key", [OLD_PUBLIC_KEY, OLD_COMPOSE_KEY, "django-insecure-abc123"])
@pytest.mark.parametrize("debug", ["0", "1"])
def test_a_publicly_known_key_is_refused_in_every_mode(key, debug):
    result = run_manage("check", DEBUG=debug, SECRET_KEY=key)

    assert result.returncode != 0
    assert "SECRET_KEY is a publicly known key" in result.stderr


def test_a_key_file_other_users_can_read_is_refused(tmp_path):
    key_file = tmp_path / "secret_key"
    secret_key.load_or_create(key_file)
    key_file.chmod(0o644)

    result = settings_key(DEBUG="1", SECRET_KEY_FILE=str(key_file))

    assert result.returncode != 0
    assert "can be read by other users" in result.stderr
    assert f"chmod 600 {key_file}" in result.stderr


def test_a_public_key_planted_in_the_key_file_is_refused(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text(OLD_PUBLIC_KEY + "\n")
    key_file.chmod(0o600)

    result = settings_key(DEBUG="1", SECRET_KEY_FILE=str(key_file))

    assert result.returncode != 0
    assert "is a publicly known key" in result.stderr


def test_check_deploy_fails_with_a_public_key_that_is_long_enough_to_pass_djangos_own():
    result = run_manage(
        "check",
        "--deploy",
        DEBUG="0",
        SECRET_KEY=OLD_COMPOSE_KEY,
        ALLOWED_HOSTS="taskhub.example.com",
        SECURE_SSL_REDIRECT="1",
        SECURE_HSTS_SECONDS="31536000",
    )

    assert result.returncode != 0
    assert "publicly known key" in result.stderr


def test_production_without_a_key_says_how_to_make_one():
    result = run_manage("check", DEBUG="0")

    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr
    assert "secrets.token_urlsafe" in result.stderr


# --- A forged token on every surface -----------------------------------------------------


@FORGING_KEYS
def test_rest_refuses_a_forged_token_with_401(alice, key, db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {forged_access_token(alice, key)}")

    response = client.get("/api/tasks/")

    assert response.status_code == 401
    assert "detail" in response.json()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
async def test_the_websocket_closes_a_forged_token_with_4401(alice, daphne_server):
    for key in (OLD_PUBLIC_KEY, OLD_COMPOSE_KEY, secrets.token_urlsafe(50)):
        token = await sync_to_async(forged_access_token)(alice, key)
        url = daphne_server.replace("http://", "ws://") + f"/ws?token={token}"
        frames = []
        async with ws_connect(url) as ws:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    frames.append(json.loads(await ws.recv()))
        assert ws.close_code == 4401, key
        assert [f["type"] for f in frames] == ["error"]
        assert frames[0]["data"]["code"] == "unauthenticated"


@pytest.fixture
def grpc_address(django_db_setup):
    server, address = start_grpcserver()
    yield address
    server.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_grpc_refuses_a_forged_token_with_unauthenticated(alice, grpc_address):
    with grpc.insecure_channel(grpc_address) as channel:
        stub = pb_grpc.TaskServiceStub(channel)
        for key in (OLD_PUBLIC_KEY, OLD_COMPOSE_KEY, secrets.token_urlsafe(50)):
            metadata = (("authorization", f"Bearer {forged_access_token(alice, key)}"),)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListTasks(pb.ListTasksRequest(), metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, key


# --- Listeners ---------------------------------------------------------------------------


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # gRPC binds ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def non_loopback_addresses() -> list[str]:
    addresses = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                addresses.append(entry.address)
    return addresses


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_grpc_listens_on_loopback_only_by_default():
    env = testing.process_env()
    env.pop("HOST", None)
    env.pop("GRPC_HOST", None)
    server = testing.ManagedProcess(
        "grpcserver", [sys.executable, "manage.py", "grpcserver", "--port", "0"], env
    )
    try:
        server.wait_for_output("listening on", timeout=60)
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", server.output).group(1))

        listening = [
            c.laddr
            for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening, server.output
        assert all(is_loopback(address.ip) for address in listening), listening
        for address in non_loopback_addresses():
            with socket.socket() as probe:
                probe.settimeout(2)
                assert probe.connect_ex((address, port)) != 0, f"gRPC answered on {address}"
    finally:
        server.stop()


def test_the_launcher_gives_every_development_process_the_runs_own_key_file(tmp_path, monkeypatch):
    from devserver import launcher

    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("SECRET_KEY_FILE", raising=False)
    backing = launcher.Backing(
        database_url="postgres://x@127.0.0.1/y",
        redis_url="redis://127.0.0.1/0",
        servers=None,
        locked=False,
    )

    child = launcher.child_env(backing, tmp_path)

    assert Path(child["SECRET_KEY_FILE"]) == tmp_path / "secret_key"
    assert "SECRET_KEY" not in child
