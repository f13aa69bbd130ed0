from django.contrib import admin, messages

from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSettings


class ReadOnlyAdminMixin:
    """No add, change or delete: deliveries and attempts are the record of what TaskHub
    sent (written by webhooks.services only); "redeliver" goes through the service the API
    uses."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class WebhookAttemptInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = WebhookAttempt
    fields = ("number", "started_at", "status_code", "latency_ms", "error")
    readonly_fields = fields
    extra = 0


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "task", "owner", "event", "url", "state", "attempts", "created_at")
    list_filter = ("state", "event")
    search_fields = ("task__id", "owner__username", "url", "event_id")
    list_select_related = ("task", "owner")
    inlines = (WebhookAttemptInline,)
    actions = ("redeliver",)

    def has_redeliver_permission(self, request):
        # Django's change permission on the model, which the mixin hides so the change
        # form stays read-only.
        return admin.ModelAdmin.has_change_permission(self, request)

    @admin.action(description="Redeliver selected webhooks", permissions=("redeliver",))
    def redeliver(self, request, queryset):
        count = 0
        for delivery in queryset.select_related("task"):
            services.delivery_redeliver(delivery=delivery)
            count += 1
        self.message_user(request, f"{count} redelivery(ies) queued.", messages.SUCCESS)


@admin.register(WebhookSettings)
class WebhookSettingsAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # Not the secret: it is its owner's, shown to them by the API only.
    list_display = ("user", "default_url", "secret_rotated_at", "updated_at")
    fields = ("user", "default_url", "secret_rotated_at", "updated_at")
    readonly_fields = fields
    search_fields = ("user__username", "default_url")
