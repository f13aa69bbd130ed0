"""The signature of a webhook request (docs/webhooks.md, "Verifying a delivery").

    X-TaskHub-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>

The scheme Stripe uses: the timestamp is signed with the body, so a captured request
replayed later fails the receiver's tolerance check, and a body cannot be moved to another
timestamp. `v1` names the scheme so a second one can be added beside it while receivers
move over. The receiver's side is the snippet in docs/webhooks.md (the tests run it).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-TaskHub-Signature"


def sign(secret: str, body: bytes, *, timestamp: int) -> str:
    """The X-TaskHub-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"
