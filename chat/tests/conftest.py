"""Chat fixtures: a third persona, a private room and a way to store messages. The
`general_room`, the personas and the WebSocket client (`connect`, devserver/wsclient.py)
are the root conftest.py's."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User

from chat import services
from chat.models import ChatRoom, Message


@pytest.fixture(autouse=True)
def _no_open_sockets_counted(clean_connection_registry) -> None:
    """Every test here starts from a registry with no socket of an earlier test in it."""


@pytest.fixture
def carol(django_user_model) -> User:
    return django_user_model.objects.create_user(username="carol", password="carol-pass-123")


@pytest.fixture
def private_room(alice) -> ChatRoom:
    """Alice's private room: alice is its owner and only member."""
    return services.chat_room_create(creator=alice, name="Alice's den", is_public=False)


@pytest.fixture
def post() -> Callable[..., Message]:
    """Store a message as `author` (joining public rooms first), with no broadcast."""

    def make(room: ChatRoom, author: User, text: str) -> Message:
        if room.is_public:
            services.chat_room_join(room=room, user=author)
        return services.chat_message_post(room=room, author=author, text=text)

    return make
