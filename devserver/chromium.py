"""Debian's Chromium as the browser tests and docs/make_screenshot.py launch it.

Free of Django so the screenshot script can import it without settings.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("TASKHUB_CHROMIUM", "/usr/bin/chromium"))

# Headless as root; without the background-networking flags Chromium keeps dialling
# Google's hosts, which a closed network refuses many times over.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
