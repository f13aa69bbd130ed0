from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        # Worker signal handlers (graceful shutdown) register on import.
        from tasks import worker_signals  # noqa: F401
