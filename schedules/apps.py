from django.apps import AppConfig


class SchedulesConfig(AppConfig):
    name = "schedules"
    verbose_name = "Schedules"

    def ready(self) -> None:
        # Schedules fire from the dispatcher's own tick (no second beat entry): a tick hook
        # (tasks/extensions.py), so tasks never imports schedules (docs/architecture.md,
        # "Apps and layers").
        from schedules import services
        from tasks import extensions

        extensions.register_tick_hook("schedules", services.schedules_fire_due)
