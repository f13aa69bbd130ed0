"""The project's AppConfig: connects the account receivers (taskhub/accounts.py) and the
REST auth cache's (taskhub/auth_jwt.py)."""

from __future__ import annotations

from django.apps import AppConfig


class TaskHubConfig(AppConfig):
    name = "taskhub"
    verbose_name = "TaskHub"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_delete, post_save

        from taskhub import accounts, auth_jwt

        user_model = get_user_model()
        post_save.connect(accounts.user_saved, sender=user_model, dispatch_uid="taskhub-user-saved")
        post_delete.connect(
            accounts.user_deleted, sender=user_model, dispatch_uid="taskhub-user-deleted"
        )
        # Here, not where DRF first loads the authentication class: connected in every
        # process before any request, whatever loads first.
        post_save.connect(
            auth_jwt.user_changed, sender=user_model, dispatch_uid="rest_auth_cache_save"
        )
        post_delete.connect(
            auth_jwt.user_changed, sender=user_model, dispatch_uid="rest_auth_cache_delete"
        )
        user_logged_out.connect(accounts.user_logged_out, dispatch_uid="taskhub-logged-out")
