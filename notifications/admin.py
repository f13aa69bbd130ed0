from django.contrib import admin, messages

from notifications import services
from notifications.models import Event, Notification


class ReadOnlyAdminMixin:
    """No add, change or delete in the admin: these rows are written by services only, and
    each has already reached its user's sockets; a hand-made, rewritten or deleted one
    would leave a client telling something else, with no event to correct it."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: the log is what clients resume from; editing it would rewrite history,
    and deleting rows would leave a resuming client told nothing of the gap. Old events
    go by age only, through notifications.services.events_prune."""

    list_display = ("user", "seq", "type", "task_id", "created_at")
    list_filter = ("type",)
    search_fields = ("user__username", "task_id")
    list_select_related = ("user",)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only but for "mark read", which goes through the service the inbox API uses.

    An entry is what the service wrote when a task finished, and its `notification.new`
    already reached the owner: adding, rewriting or deleting one by hand would leave the
    owner's sockets and page telling something else, with no event to correct them.
    """

    list_display = ("user", "title", "task_id", "read_at", "created_at")
    list_filter = ("read_at",)
    search_fields = ("user__username", "title")
    list_select_related = ("user",)
    actions = ("mark_read",)

    def has_mark_read_permission(self, request):
        # Django's change permission on the model, which the mixin's has_change_permission
        # hides so that the change form stays read-only (hence not super(): that is the
        # mixin's).
        return admin.ModelAdmin.has_change_permission(self, request)

    @admin.action(description="Mark selected notifications read", permissions=("mark_read",))
    def mark_read(self, request, queryset):
        # Not notification_mark_all_read: that is one user's whole inbox.
        for notification in queryset.filter(read_at__isnull=True):
            services.notification_mark_read(notification=notification)
        self.message_user(request, "Marked read.", messages.SUCCESS)
