from __future__ import annotations

from django.conf import settings
from django.db import models


class EventCounter(models.Model):
    """The last event sequence number handed out for one user.

    Taking the next number is an UPDATE of this row, whose lock is held until the
    transaction commits, so a user's events commit in sequence order: a client that has
    seen event N has seen every event below N, and a gap (N+2 after N) always means a
    push was lost, never that an earlier transaction is still about to commit.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True
    )
    last_seq = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.last_seq}"


class Event(models.Model):
    """One persisted, user-visible event: what a reconnecting client resumes from."""

    # No index of its own: the unique (user, seq) index below starts with it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    # Per-user, gap-free, strictly increasing: the `id` of the WebSocket envelope.
    seq = models.BigIntegerField()
    type = models.CharField(max_length=64)
    data = models.JSONField()
    # For the per-task history (/api/tasks/{id}/events/) without digging into `data`.
    task_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["user", "seq"], name="event_user_seq_unique"),
        ]
        indexes = [
            models.Index(fields=["task_id", "seq"], name="event_task_idx"),
            models.Index(fields=["created_at"], name="event_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} for user {self.user_id}"


class Notification(models.Model):
    """One entry of a user's inbox (a task that finished, say); `notification.new` tells
    their open sockets."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    # What it is about, if a task; no foreign key: notifications never import tasks.
    task_id = models.UUIDField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The inbox page: newest first per user.
            models.Index(fields=["user", "-created_at"], name="notification_user_idx"),
            # unread_count and read-all touch only unread rows.
            models.Index(
                fields=["user"],
                name="notification_unread_idx",
                condition=models.Q(read_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} for user {self.user_id}"
