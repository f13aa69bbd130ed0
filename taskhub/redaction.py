"""Secrets out of every log line: tokens in query strings, JWTs, Bearer credentials.

A JWT is a bearer credential for its whole lifetime: a log line that holds one hands the
account to whoever reads the log (OWASP's WebSocket cheat sheet: no tokens in logs). The
WebSocket takes its token in the query (`/ws?token=...`, docs/protocol.md), which Daphne's
access log writes out, and any request line, header or exception message may carry one.
So redaction happens where lines are written, not where they are made: Daphne's access log
(taskhub/daphne_server.py) and every handler of settings.LOGGING (RedactingFormatter),
which the web process, Celery (settings.LOGGING is its only logging config: the
setup_logging receiver in taskhub/celery.py) and the gRPC server share.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

# Query parameters whose value is a credential (ours: token; common others too).
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:token|access_token|access|refresh|refresh_token|password|secret|api_key)=)"
    r"[^&;#\s\"']*"
)
# A JWS in compact form: base64url header starting '{"' (eyJ), payload, signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+")


def redact(text: str) -> str:
    """`text` with every credential it visibly holds replaced by [redacted]."""
    if "=" in text:
        text = _QUERY_SECRET.sub(rf"\g<1>{REDACTED}", text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "earer" in text:
        text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return text


class RedactingFormatter(logging.Formatter):
    """A Formatter whose output (message, arguments, traceback) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
