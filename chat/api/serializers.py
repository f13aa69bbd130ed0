from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from chat import selectors, services
from chat.models import ChatRoom, Message, ParticipantRole, RoomKind


class UserRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()


class RoomOutputSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    is_public = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    created_by = serializers.SerializerMethodField()
    role = serializers.ChoiceField(choices=ParticipantRole.choices, allow_null=True)
    unread_count = serializers.IntegerField(
        allow_null=True, help_text="Messages after your read mark; null if not a participant."
    )
    last_message_id = serializers.IntegerField(
        allow_null=True,
        help_text="The room's newest message id as this list was read (null: no messages); "
        "unread_count counts up to it.",
    )
    kind = serializers.ChoiceField(choices=RoomKind.choices)
    peer = serializers.SerializerMethodField(
        help_text="A direct room's other participant; null for other rooms."
    )

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, room: ChatRoom) -> dict[str, Any] | None:
        return services.chat_user_data(room.created_by)

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_peer(self, room: ChatRoom) -> dict[str, Any] | None:
        peer_id = getattr(room, "peer_id", None)
        if peer_id is None:
            return None
        return {"id": peer_id, "username": room.peer_username}


class UsernameInputSerializer(serializers.Serializer):
    # Exact, as typed: no trimming (a username never starts or ends with a space).
    username = serializers.CharField(max_length=150, trim_whitespace=False)


class InviteOutputSerializer(serializers.Serializer):
    room = serializers.SlugField()
    user = UserRefSerializer()
    role = serializers.ChoiceField(choices=ParticipantRole.choices)
    added = serializers.BooleanField(help_text="False: they were a participant already.")


class JsonBooleanField(serializers.BooleanField):
    """true or false only, as the schema says: DRF's BooleanField also takes 0, 1, "yes",
    "on" and the like, which a JSON client never needs and the schema cannot state."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class RoomCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    # A slug field whose pattern (in the schema too) asks for a letter or digit: "---" or
    # "_" is a slug to SlugField but slugifies to nothing.
    slug = serializers.RegexField(
        r"^[-_]*[a-zA-Z0-9][-a-zA-Z0-9_]*$",
        max_length=50,
        required=False,
        allow_blank=True,
        error_messages={
            "invalid": "Give a slug of letters, digits, - or _, with a letter or digit in it."
        },
    )
    is_public = JsonBooleanField(required=False, default=True)


class MessageOutputSerializer(serializers.Serializer):
    """The same shape the WebSocket carries (chat.services.chat_message_data)."""

    id = serializers.IntegerField()
    room = serializers.SlugField()
    author = UserRefSerializer(allow_null=True)
    text = serializers.CharField()
    created_at = serializers.CharField()
    edited_at = serializers.CharField(allow_null=True)

    def to_representation(self, message: Message) -> dict[str, Any]:
        return services.chat_message_data(message, room_slug=self.context.get("room_slug"))


class MessagePageOutputSerializer(serializers.Serializer):
    results = MessageOutputSerializer(many=True)
    has_more = serializers.BooleanField(
        help_text="More messages lie beyond this page in the direction asked."
    )


class MessagePageInputSerializer(serializers.Serializer):
    before = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    after = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1)
    limit = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=selectors.MAX_PAGE_LIMIT,
        default=selectors.DEFAULT_PAGE_LIMIT,
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "before" in attrs and "after" in attrs:
            raise serializers.ValidationError("Give `before` or `after`, not both.")
        return attrs


class MarkReadInputSerializer(serializers.Serializer):
    message_id = serializers.IntegerField(
        required=False, min_value=1, max_value=2**63 - 1, allow_null=True, default=None
    )


class UnreadOutputSerializer(serializers.Serializer):
    room = serializers.SlugField()
    unread_count = serializers.IntegerField()
    last_read_message_id = serializers.IntegerField(allow_null=True)
