"""Where SECRET_KEY comes from when the environment does not set one (docs/security.md).

Everything TaskHub signs (JWTs, sessions, password-reset links) is signed with
SECRET_KEY, so a key that anyone can read — one in this repository, in a compose file or
in a tutorial — lets anyone sign a token for any user. So:

* A production run (DEBUG off) must set SECRET_KEY; settings refuse to start without it.
* A development run (DEBUG on) without SECRET_KEY gets a random key, made once and kept in
  a file beside the run's data (`.data/secret_key`, mode 0600), so tokens and sessions
  survive a restart but no two checkouts share a key.
* A key known to be public is refused in every mode.

This module imports nothing from Django's settings: settings.py calls it while loading.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# Keys that have been published and so sign nothing, ever: TaskHub's own former fallback
# and compose default, and the placeholders that documentation tends to show.
KNOWN_PUBLIC_KEYS = frozenset(
    {
        "insecure-development-key-do-not-use-in-production",
        "change-me-in-production-0123456789abcdefghijklmnopqrstuvwxyz",
        "change-me",
        "changeme",
        "secret",
        "your-secret-key",
    }
)
# Django's `startproject` marks its generated development keys with this prefix, and its
# own deploy check treats them as insecure.
PUBLIC_KEY_PREFIXES = ("django-insecure-", "change-me", "insecure-")

# 50 URL-safe characters of randomness, as long as Django's generated keys.
_KEY_BYTES = 38


def is_known_public(key: str) -> bool:
    normalized = key.strip().lower()
    return normalized in KNOWN_PUBLIC_KEYS or normalized.startswith(PUBLIC_KEY_PREFIXES)


def refuse_public_key(key: str, *, source: str) -> None:
    if is_known_public(key):
        raise ImproperlyConfigured(
            f"{source} is a publicly known key: anyone could sign tokens with it. Generate "
            "one with `python -c 'import secrets; print(secrets.token_urlsafe(50))'` "
            "(docs/security.md)."
        )


def load_or_create(path: Path) -> str:
    """The key kept in `path`, created with a new random key (mode 0600) if missing.

    Several processes of one run start at once (web, workers, beat, gRPC), so creation is
    atomic: the key is written to a private temporary file that is then hard-linked into
    place, which fails if another process got there first; everyone then reads the winner.
    """
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(_KEY_BYTES) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        raise ImproperlyConfigured(
            f"{path} can be read by other users: anyone who can read it can sign tokens. "
            f"Run `chmod 600 {path}` (or delete it and a new key is made)."
        )
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it and a new key is made")
    refuse_public_key(key, source=str(path))
    return key
