"""One webhook POST, to the address the SSRF check approved (webhooks.urlguard).

The request goes to that IP, with the URL's host in the Host header and as the TLS server
name (so the certificate is still checked against the host name): a DNS answer that
changes between the check and the connection (rebinding) is never used. Redirects are not
followed (a 3xx is a failed attempt: following one would reach a URL nobody checked), and
only the first bytes of the answer are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from webhooks.urlguard import Target

RESPONSE_EXCERPT_BYTES = 1024


@dataclass(frozen=True)
class Answer:
    status_code: int
    excerpt: str


def _netloc(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def post(target: Target, *, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST `body`; httpx.HTTPError when no HTTP answer came."""
    url = httpx.URL(target.url).copy_with(host=target.address)
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        request = client.build_request(
            "POST",
            url,
            content=body,
            headers={**headers, "Host": _netloc(target)},
            extensions=extensions,
        )
        response = client.send(request, stream=True)
        try:
            excerpt = b""
            for chunk in response.iter_raw():
                excerpt += chunk
                if len(excerpt) >= RESPONSE_EXCERPT_BYTES:
                    break
        finally:
            response.close()
    return Answer(
        status_code=response.status_code,
        excerpt=excerpt[:RESPONSE_EXCERPT_BYTES].decode("utf-8", "replace"),
    )
