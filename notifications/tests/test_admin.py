"""The inbox admin: operators read it and mark entries read, through the inbox's service."""

from __future__ import annotations

import pytest

from notifications import services
from notifications.models import Notification

pytestmark = pytest.mark.django_db


def test_an_operator_reads_the_inbox_but_cannot_add_change_or_delete(operator, alice):
    entry = services.notify(user_id=alice.pk, title="Task “report” completed")

    listing = operator.get("/admin/notifications/notification/")
    page = operator.get(f"/admin/notifications/notification/{entry.pk}/change/")

    assert "Task “report” completed" in listing.content.decode()
    assert page.status_code == 200
    assert 'name="title"' not in page.content.decode()  # shown, not editable
    assert operator.get("/admin/notifications/notification/add/").status_code == 403
    edit = operator.post(
        f"/admin/notifications/notification/{entry.pk}/change/", {"title": "rewritten"}
    )
    delete = operator.post(f"/admin/notifications/notification/{entry.pk}/delete/", {"post": "yes"})
    assert (edit.status_code, delete.status_code) == (403, 403)
    entry.refresh_from_db()
    assert entry.title == "Task “report” completed"


def test_mark_read_marks_only_the_selected_unread_entries_and_keeps_first_read_times(
    operator, alice
):
    unread = services.notify(user_id=alice.pk, title="one")
    already = services.notify(user_id=alice.pk, title="two")
    services.notification_mark_read(notification=already)
    first_read = Notification.objects.get(pk=already.pk).read_at
    untouched = services.notify(user_id=alice.pk, title="three")

    response = operator.post(
        "/admin/notifications/notification/",
        {"action": "mark_read", "_selected_action": [unread.pk, already.pk]},
    )

    assert response.status_code == 302
    assert Notification.objects.get(pk=unread.pk).read_at is not None
    assert Notification.objects.get(pk=already.pk).read_at == first_read
    assert Notification.objects.get(pk=untouched.pk).read_at is None


def test_staff_without_the_change_permission_cannot_mark_read(client, django_user_model, alice):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="viewer-pass-1")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_notification"))
    client.force_login(viewer)
    entry = services.notify(user_id=alice.pk, title="one")

    client.post(
        "/admin/notifications/notification/",
        {"action": "mark_read", "_selected_action": [entry.pk]},
    )

    assert Notification.objects.get(pk=entry.pk).read_at is None
