"""Chat rooms, who is in them, and what was said (docs/chat.md).

What a deleted user leaves behind: their messages stay (author becomes NULL, shown as
"deleted user"), rooms they created stay (created_by NULL), their participations go.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class RoomKind(models.TextChoices):
    ROOM = "room", "Room"
    # Two users talking: private, exactly those two participants, never invited into.
    DIRECT = "direct", "Direct messages"


class ChatRoom(models.Model):
    name = models.CharField(max_length=100)
    # The room's public handle on the wire (`subscribe.chat {"room": "general"}`) and in URLs.
    slug = models.SlugField(max_length=50, unique=True)
    is_public = models.BooleanField(default=True)
    # SET_NULL: a room outlives its creator; its other members keep talking.
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=16, choices=RoomKind.choices, default=RoomKind.ROOM)
    # For a direct room, "<smaller user id>:<larger user id>": unique, so two users have at
    # most one direct room however many times (and from however many tabs) either starts
    # it. NULL for every other room (NULLs do not collide under a unique constraint).
    direct_key = models.CharField(max_length=41, null=True, blank=True, unique=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.slug


class ParticipantRole(models.TextChoices):
    OWNER = "owner", "Owner"
    MEMBER = "member", "Member"


class ChatParticipant(models.Model):
    # No separate index on room: the unique (room, user) constraint below leads with it.
    room = models.ForeignKey(
        ChatRoom, on_delete=models.CASCADE, related_name="participants", db_index=False
    )
    # CASCADE: membership means nothing without the user; their messages are kept apart.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_participations"
    )
    role = models.CharField(
        max_length=16, choices=ParticipantRole.choices, default=ParticipantRole.MEMBER
    )
    joined_at = models.DateTimeField(default=timezone.now)
    # A read watermark, compared by id only ("unread = messages of the room with a higher
    # id"). No database constraint and DO_NOTHING: deleting a message (moderation in the
    # admin) must not reset the reader to "everything unread", as SET_NULL would.
    last_read_message = models.ForeignKey(
        "Message",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="chat_participant_room_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room_id} ({self.role})"


class Message(models.Model):
    # No separate index on room: message_room_id_idx below leads with it.
    room = models.ForeignKey(
        ChatRoom, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    # SET_NULL: a deleted user's words stay in the room's history as "deleted user".
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="chat_messages",
    )
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    edited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # One btree on (room, id) serves every history read: "messages after id X"
            # scans it forward, "latest N" and "before id X" scan it backward (PostgreSQL
            # reads a btree in both directions), and unread counts are a range of it. A
            # second (room, -id) index would only cost writes.
            models.Index(fields=["room", "id"], name="chat_message_room_id_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} in {self.room_id}"
