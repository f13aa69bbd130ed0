from django.contrib import admin

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
    list_display = ("user", "title", "task_id", "read_at", "created_at")
    list_filter = ("read_at",)
    search_fields = ("user__username", "title")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
