"""gRPC CreateTask takes callback_url under the same rules as REST; Task shows it."""

from __future__ import annotations

import grpc
import pytest

from conftest import access_token_for
from tasks.grpc.gen import taskhub_pb2 as pb
from tasks.grpc.gen import taskhub_pb2_grpc as pb_grpc
from tasks.grpc.server import create_server
from tasks.models import Task


@pytest.fixture
def stub(transactional_db, monkeypatch):
    from webhooks import urlguard

    monkeypatch.setattr(
        urlguard, "resolve", lambda host, port: {"hooks.example.com": ["93.184.215.14"]}[host]
    )
    server = create_server(port=0, host="127.0.0.1")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.TaskServiceStub(channel)
    server.stop(0)


def test_create_task_takes_a_callback_url_and_the_task_shows_it(alice, stub):
    metadata = (("authorization", f"Bearer {access_token_for(alice)}"),)

    task = stub.CreateTask(
        pb.CreateTaskRequest(title="t", kind="echo", callback_url="https://hooks.example.com/h"),
        metadata=metadata,
        timeout=10,
    )

    assert task.callback_url == "https://hooks.example.com/h"
    assert Task.objects.get(pk=task.id).callback_url == "https://hooks.example.com/h"
    assert stub.GetTask(pb.GetTaskRequest(id=task.id), metadata=metadata).callback_url == (
        "https://hooks.example.com/h"
    )


def test_create_task_refuses_a_private_callback_url_as_invalid_argument(
    alice, stub, private_refused
):
    metadata = (("authorization", f"Bearer {access_token_for(alice)}"),)

    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateTask(
            pb.CreateTaskRequest(title="t", callback_url="http://169.254.169.254/latest"),
            metadata=metadata,
            timeout=10,
        )

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "callback_url" in refused.value.details()
    assert "link-local" in refused.value.details()
    assert Task.objects.count() == 0
