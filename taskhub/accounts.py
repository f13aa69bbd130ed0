"""Accounts: the one place a user is created (REST sign-up, the page's sign-up form) or
deactivated, and what ends a user's open WebSockets.

Users are Django's own auth.User; TaskHub adds no profile. Both sign-up paths call
user_create, so they refuse the same input with the same words.

An open WebSocket authenticated once, at connect. So that a credential taken away takes
the socket with it (docs/protocol.md, "Close codes", 4401), the receivers below, connected
in taskhub/apps.py, push `session.revoked` after commit: to the user's group when the
account is deactivated (user_deactivate, the admin's "active" box, any save of
is_active=False) or deleted, and to the session's group when a signed-in page logs out.
A push lost to a Redis outage is made up by the hub's sweep (WS_CATCHUP_INTERVAL), which
closes sockets of inactive users; a bulk QuerySet.update() sends no signal and relies on
that sweep alone.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from notifications import protocol, push
from notifications.middleware import SESSION_REVOKED, session_group

USERNAME_TAKEN = "A user with that username already exists."


def user_create(*, username: str, password: str) -> AbstractBaseUser:
    """A new active user, or ValidationError({"username"|"password": [messages]})."""
    user_validate(username=username, password=password)
    try:
        with transaction.atomic():
            return get_user_model().objects.create_user(username=username, password=password)
    except IntegrityError:  # the same name, registered by a racing request just now
        raise ValidationError({"username": [USERNAME_TAKEN]}) from None


def user_validate(*, username: str, password: str) -> None:
    """Raise ValidationError({"username"|"password": [messages]}) unless user_create would
    accept these. Usernames are unique ignoring case (so "Alice" cannot pass for "alice"
    in chat); the password must pass AUTH_PASSWORD_VALIDATORS."""
    user_model = get_user_model()
    candidate = user_model(username=username)
    errors: dict[str, list[str]] = {}
    try:
        candidate.clean_fields(exclude=["password", "last_login"])
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if "username" not in errors and user_model.objects.filter(username__iexact=username).exists():
        errors["username"] = [USERNAME_TAKEN]
    try:
        password_validation.validate_password(password, user=candidate)
    except ValidationError as exc:
        errors["password"] = list(exc.messages)
    if errors:
        raise ValidationError(errors)


def user_deactivate(*, user: AbstractBaseUser) -> None:
    """The user can no longer sign in or use a token; their open sockets are closed with
    4401 once this commits (user_saved)."""
    with transaction.atomic():
        user.is_active = False
        user.save(update_fields=["is_active"])


def sockets_revoke_for_user(*, user_id: int) -> None:
    """Close every open socket of the user, on every web instance, after commit."""
    push.push_after_commit(
        group=protocol.user_group(user_id),
        message={"type": SESSION_REVOKED, "reason": "deactivated"},
        recipient=f"user {user_id}",
    )


def sockets_revoke_for_session(*, session_key: str) -> None:
    """Close the sockets a browser session opened (it logged out), after commit."""
    push.push_after_commit(
        group=session_group(session_key),
        message={"type": SESSION_REVOKED, "reason": "logged_out"},
        recipient="a logged-out session",
    )


# --- Signal receivers (connected in taskhub/apps.py) -----------------------------------


def user_saved(
    sender: Any, instance: AbstractBaseUser, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    """post_save: a saved inactive user has no open socket left. Every save that may have
    written is_active=False counts (the admin's form saves every field); one that names
    other fields only (last_login) does not."""
    if created or instance.is_active:
        return
    if update_fields is not None and "is_active" not in update_fields:
        return
    sockets_revoke_for_user(user_id=instance.pk)


def user_deleted(sender: Any, instance: AbstractBaseUser, **kwargs: Any) -> None:
    """post_delete: a deleted user's sockets go with it."""
    sockets_revoke_for_user(user_id=instance.pk)


def user_logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """django.contrib.auth's user_logged_out, sent before the session is flushed."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        sockets_revoke_for_session(session_key=session_key)
