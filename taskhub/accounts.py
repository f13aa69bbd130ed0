"""Accounts: the one place a user is created (REST sign-up, the page's sign-up form).

Users are Django's own auth.User; TaskHub adds no profile. Both sign-up paths call
user_create, so they refuse the same input with the same words.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

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
