from django.contrib import admin, messages

from notifications import services
from notifications.models import Event, Notification


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only: the log is what clients resume from; editing it would rewrite history."""

    list_display = ("user", "seq", "type", "task_id", "created_at")
    list_filter = ("type",)
    search_fields = ("user__username", "task_id")
    list_select_related = ("user",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleting rows is rewriting history too: a resuming client would be told nothing
        # of the gap. Old events go by age only, through notifications.services.events_prune.
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_mark_read_permission(self, request):
        # Django's change permission on the model, which has_change_permission hides so
        # that the change form stays read-only.
        return super().has_change_permission(request)

    @admin.action(description="Mark selected notifications read", permissions=("mark_read",))
    def mark_read(self, request, queryset):
        # Not notification_mark_all_read: that is one user's whole inbox.
        for notification in queryset.filter(read_at__isnull=True):
            services.notification_mark_read(notification=notification)
        self.message_user(request, "Marked read.", messages.SUCCESS)
