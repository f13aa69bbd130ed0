from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # webhooks plugs into tasks' life (tasks.extensions) so tasks never imports it
        # (docs/architecture.md, "Apps and layers"): the outbox row is written in the
        # transaction of a terminal status change, and a task's callback_url is checked
        # against the SSRF rule at create.
        from tasks import extensions
        from webhooks import services, urlguard

        extensions.register_status_listener(services.delivery_enqueue_for_change)
        extensions.register_callback_url_validator(urlguard.callback_url_validate)
