"""notifications.services promises the mutation check (docs/mutation.md) found untested:
marking read keeps the first read time, and marking all read touches only unread rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from notifications import services
from notifications.models import Notification

pytestmark = pytest.mark.django_db


def test_marking_a_notification_read_twice_keeps_the_first_read_time(alice):
    notification = services.notify(user_id=alice.pk, title="done")

    first = services.notification_mark_read(notification=notification).read_at
    again = services.notification_mark_read(
        notification=Notification.objects.get(pk=notification.pk)
    )

    assert first is not None
    assert again.read_at == first
    notification.refresh_from_db()
    assert notification.read_at == first


def test_marking_read_through_a_stale_copy_returns_the_time_already_stored(alice):
    # Another request marked it read after this copy was loaded: the copy still says
    # unread, and the answer must be the stored time, not a new one.
    notification = services.notify(user_id=alice.pk, title="done")
    earlier = timezone.now() - timedelta(hours=1)
    Notification.objects.filter(pk=notification.pk).update(read_at=earlier)
    assert notification.read_at is None

    marked = services.notification_mark_read(notification=notification)

    assert marked.read_at == earlier
    assert Notification.objects.get(pk=notification.pk).read_at == earlier


def test_marking_read_returns_the_time_it_stored(alice):
    notification = services.notify(user_id=alice.pk, title="done")

    marked = services.notification_mark_read(notification=notification)

    assert marked.read_at is not None
    assert Notification.objects.get(pk=notification.pk).read_at == marked.read_at


def test_mark_all_read_keeps_earlier_read_times_and_counts_only_what_changed(alice):
    old = services.notify(user_id=alice.pk, title="old")
    earlier = timezone.now() - timedelta(hours=1)
    Notification.objects.filter(pk=old.pk).update(read_at=earlier)
    services.notify(user_id=alice.pk, title="new")

    assert services.notification_mark_all_read(user=alice) == 1

    assert Notification.objects.get(pk=old.pk).read_at == earlier
    assert not Notification.objects.filter(user=alice, read_at__isnull=True).exists()
