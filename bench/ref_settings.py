"""Settings of the minimal-Django reference: TaskHub's own settings (same middleware,
database, DEBUG, everything), only the URLs are the reference's (bench/ref_django.py)."""

from taskhub.settings import *  # noqa: F403

ROOT_URLCONF = "bench.ref_django"
