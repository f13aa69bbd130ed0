"""End to end: a real Daphne, a real Celery worker and a real `websockets` client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect as ws_connect

from conftest import access_token_for
from notifications.tests.conftest import publish_event

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Spelled out, not imported from notifications.protocol: this test checks the protocol
# from the outside, as a client would, so it must not share the constant it checks.
TERMINAL = {"completed", "failed", "cancelled"}


class Socket:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def receive(self, timeout: float = 20) -> dict[str, Any]:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def receive_until(self, done, timeout: float = 30) -> list[dict[str, Any]]:
        """Frames until `done(frame)` is true for one (included)."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive(timeout)
                frames.append(frame)
                if done(frame):
                    return frames

    async def ping(self, ref: str = "sync") -> list[dict[str, Any]]:
        """Everything that arrives before the pong to this ping."""
        await self.ws.send(json.dumps({"type": "ping", "ref": ref}))
        frames = await self.receive_until(lambda f: f["type"] == "pong" and f.get("ref") == ref)
        return frames[:-1]


def ws_url(base_url: str, token: str, query: str = "") -> str:
    url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
    return url + (f"&{query}" if query else "")


async def token(user) -> str:
    return await sync_to_async(access_token_for)(user)


async def create_task(base_url: str, user, **fields) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {await token(user)}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as http:
        response = await http.post("/api/tasks/", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


async def api_get(base_url: str, user, path: str) -> Any:
    headers = {"Authorization": f"Bearer {await token(user)}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as http:
        response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def is_finished(task_id: str):
    return lambda f: (
        f["type"] == "task.updated"
        and f["data"]["task_id"] == task_id
        and f["data"]["status"] in TERMINAL
    )


async def test_a_task_created_over_rest_streams_its_whole_life_to_its_owner_only(
    alice, bob, daphne_server, celery_worker_process
):
    async with (
        ws_connect(ws_url(daphne_server, await token(alice))) as alice_ws,
        ws_connect(ws_url(daphne_server, await token(bob))) as bob_ws,
    ):
        alice_socket, bob_socket = Socket(alice_ws), Socket(bob_ws)
        assert (await alice_socket.receive())["type"] == "welcome"
        assert (await bob_socket.receive())["type"] == "welcome"

        task = await create_task(
            daphne_server, alice, title="e2e", kind="simulate", params={"seconds": 1, "steps": 4}
        )
        frames = await alice_socket.receive_until(is_finished(task["id"]))
        updates = [f for f in frames if f["type"] == "task.updated"]
        assert [u["data"]["status"] for u in updates] == [
            "pending",
            "queued",
            "in_progress",
            "completed",
        ]
        ids = [u["id"] for u in updates]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert updates[-1]["data"]["result"]["steps"] == 4
        progress_at = [i for i, f in enumerate(frames) if f["type"] == "task.progress"]
        assert progress_at, "no task.progress between in_progress and completed"
        started_at = frames.index(updates[2])
        assert all(started_at < i < frames.index(updates[3]) for i in progress_at)
        # The inbox entry follows the terminal event.
        rest = await alice_socket.receive_until(lambda f: f["type"] == "notification.new")
        assert rest[-1]["id"] == ids[-1] + 1

        assert await bob_socket.ping() == []  # bob heard nothing of it
    assert "Event loop is closed" not in celery_worker_process.output


async def test_a_reconnect_gets_exactly_what_was_missed_while_away(
    alice, daphne_server, celery_worker_process
):
    async with ws_connect(ws_url(daphne_server, await token(alice))) as ws:
        last_seen = (await Socket(ws).receive())["data"]["last_event_id"]

    task = await create_task(daphne_server, alice, title="away", kind="echo", params={"a": 1})

    async def finished() -> None:
        while (await api_get(daphne_server, alice, f"/api/tasks/{task['id']}/"))[
            "status"
        ] not in TERMINAL:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(finished(), 30)
    expected = await api_get(daphne_server, alice, f"/api/events/?after_id={last_seen}")
    expected_ids = [e["id"] for e in expected["results"]]
    assert len(expected_ids) == 5  # pending, queued, in_progress, completed, notification

    query = f"last_event_id={last_seen}"
    async with ws_connect(ws_url(daphne_server, await token(alice), query)) as ws:
        socket = Socket(ws)
        assert (await socket.receive())["type"] == "welcome"
        replayed = [f for f in await socket.ping() if "id" in f]
        assert [f["id"] for f in replayed] == expected_ids
        assert replayed == expected["results"]


async def test_a_subprotocol_token_and_a_bad_token_over_a_real_server(alice, daphne_server):
    url = daphne_server.replace("http://", "ws://") + "/ws"
    good = await token(alice)
    async with ws_connect(url, subprotocols=[good]) as ws:
        assert ws.subprotocol == good
        assert json.loads(await ws.recv())["type"] == "welcome"
    async with ws_connect(url + "?token=bad") as ws:
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 4401
    async with ws_connect(url + f"?token={good}", origin="https://evil.example") as ws:
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 4403


async def test_an_idle_socket_still_receives_after_65_seconds(alice, daphne_server):
    """channels_redis 4.3 with redis-py 8 dropped idle sockets after ~5 s (channels_redis
    #422) unless the layer's socket_timeout is None. No keepalive pings either side."""
    async with ws_connect(ws_url(daphne_server, await token(alice)), ping_interval=None) as ws:
        socket = Socket(ws)
        assert (await socket.receive())["type"] == "welcome"
        # The condition under test is 66 s of silence with the socket still open.
        with pytest.raises(TimeoutError):
            await socket.receive(timeout=66)
        event_id = await publish_event(alice, 1)  # pushed from this process via Redis
        frame = await socket.receive(timeout=10)
        assert (frame["type"], frame["id"]) == ("task.updated", event_id)
