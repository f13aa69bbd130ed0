"""End to end: a real Daphne, a real Celery worker and a real `websockets` client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from conftest import access_token_for
from devserver.wsclient import eventually, open_network
from notifications.tests.conftest import publish_event

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TERMINAL = {"completed", "failed", "cancelled"}


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
    alice_socket = await open_network(daphne_server, token=await token(alice))
    bob_socket = await open_network(daphne_server, token=await token(bob))
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
    assert {u["data"]["task_id"] for u in updates} == {task["id"]}
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

    await bob_socket.assert_nothing_more()  # bob heard nothing of it
    await alice_socket.close()
    await bob_socket.close()
    assert "Event loop is closed" not in celery_worker_process.output


async def test_a_reconnect_gets_exactly_what_was_missed_while_away(
    alice, daphne_server, celery_worker_process
):
    socket = await open_network(daphne_server, token=await token(alice))
    last_seen = (await socket.receive_type("welcome"))["data"]["last_event_id"]
    await socket.close()

    task = await create_task(daphne_server, alice, title="away", kind="echo", params={"a": 1})

    async def finished() -> bool:
        path = f"/api/tasks/{task['id']}/"
        return (await api_get(daphne_server, alice, path))["status"] in TERMINAL

    await eventually(finished, timeout=30, message="the task to finish")
    expected = await api_get(daphne_server, alice, f"/api/events/?after_id={last_seen}")
    expected_ids = [e["id"] for e in expected["results"]]
    # pending, queued, in_progress, completed, notification
    assert expected_ids == list(range(last_seen + 1, last_seen + 6))

    query = f"last_event_id={last_seen}"
    socket = await open_network(daphne_server, token=await token(alice), query=query)
    assert (await socket.receive())["type"] == "welcome"
    replayed = [f for f in await socket.ping() if "id" in f]
    assert [f["id"] for f in replayed] == expected_ids
    assert replayed == expected["results"]
    await socket.close()


async def test_a_subprotocol_token_and_a_bad_token_over_a_real_server(alice, daphne_server):
    good = await token(alice)
    socket = await open_network(daphne_server, subprotocols=[good])
    assert socket.subprotocol == good
    assert (await socket.receive())["type"] == "welcome"
    await socket.close()
    socket = await open_network(daphne_server, token="bad")
    assert (await socket.receive_close())[0] == 4401
    socket = await open_network(daphne_server, token=good, origin="https://evil.example")
    assert await socket.receive_close() == (4403, [])


@pytest.mark.slow
async def test_an_idle_socket_still_receives_after_65_seconds(alice, daphne_server):
    """channels_redis 4.3 with redis-py 8 dropped idle sockets after ~5 s (channels_redis
    #422) unless the layer's socket_timeout is None. No keepalive pings either side.
    `slow`: the condition under test is 66 s of silence; only time produces it."""
    socket = await open_network(daphne_server, token=await token(alice))
    assert (await socket.receive())["type"] == "welcome"
    with pytest.raises(TimeoutError):
        await socket.receive(timeout=66)
    event_id = await publish_event(alice, 1)  # pushed from this process via Redis
    frame = await socket.receive()
    assert (frame["type"], frame["id"]) == ("task.updated", event_id)
    await socket.close()
