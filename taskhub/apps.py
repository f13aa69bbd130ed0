"""The project's AppConfig: connects the account receivers (taskhub/accounts.py)."""

from __future__ import annotations

from django.apps import AppConfig


class TaskHubConfig(AppConfig):
    name = "taskhub"
    verbose_name = "TaskHub"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_delete, post_save

        from taskhub import accounts

        user_model = get_user_model()
        post_save.connect(accounts.user_saved, sender=user_model, dispatch_uid="taskhub-user-saved")
        post_delete.connect(
            accounts.user_deleted, sender=user_model, dispatch_uid="taskhub-user-deleted"
        )
        user_logged_out.connect(accounts.user_logged_out, dispatch_uid="taskhub-logged-out")
