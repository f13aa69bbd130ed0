from django.apps import AppConfig


class SchedulesConfig(AppConfig):
    name = "schedules"
    verbose_name = "Schedules"

    def ready(self) -> None:
        # Schedules fire from the dispatcher's own tick (no second beat entry): tasks/
        # dispatch_hooks.py runs what apps register here, so tasks never imports schedules
        # (docs/architecture.md, "Apps and layers").
        from schedules import services
        from tasks import dispatch_hooks

        dispatch_hooks.register("schedules", services.schedules_fire_due)
