"""The SSRF rule for webhook URLs (docs/webhooks.md, "Which URLs").

A callback URL is a request TaskHub's worker makes on a user's behalf from inside the
deployment's network: pointed at 127.0.0.1, 10.x, 169.254.169.254 (cloud metadata) or
an internal host name it would reach what the user cannot. So the host is resolved and the
URL refused if ANY of its addresses is not a public unicast one (loopback, private,
link-local, multicast, reserved, unspecified, shared/CGNAT, an IPv4-mapped form of those),
unless settings.TASKHUB_WEBHOOK_ALLOW_PRIVATE (WEBHOOK_ALLOW_PRIVATE=1: development and
tests, whose receivers listen on 127.0.0.1).

Checked twice: when the URL is given (a 400 naming callback_url or default_url; a host
that does not resolve yet is let through, as nothing can be reached by it) and again
before every attempt, since DNS may answer differently later (rebinding). The attempt then
connects to the address this check approved (webhooks.delivery), not to whatever a second
resolution would return.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> addresses; tests swap it for a fake DNS (webhooks/tests).
Resolver = Callable[[str, int], list[str]]


class UrlRefused(ValueError):
    """The URL may not be called; the message says why (shown to its owner)."""


@dataclass(frozen=True)
class Target:
    """A URL approved for one request: connect to `address`, say `host` (Host header,
    TLS server name)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


resolve: Resolver = system_resolver


def _why_not_public(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one reaches that IPv4 host: judge it by that.
        # ::ffff:a.b.c.d (mapped), and 2002:AABB:CCDD:: (6to4), which Python counts as
        # global whatever it wraps (Teredo, 2001::/32, is refused as private already).
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return _why_not_public(embedded)
    # Most specific first: 169.254.x is private too, but "link-local" says more.
    for flag in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{flag}"):
            return flag.replace("_", "-")
    if not ip.is_global:  # 100.64.0.0/10 (shared address space) and the like
        return "not a public address"
    return None


def check(
    url: str, *, allow_private: bool | None = None, unresolved_ok: bool = False
) -> Target | None:
    """The Target to connect to for `url`, or UrlRefused saying why not. `unresolved_ok`
    (when a URL is given, not called): a host that does not resolve yet passes, as None;
    the attempts refuse it until it does, and check its addresses then."""
    if allow_private is None:
        allow_private = settings.TASKHUB_WEBHOOK_ALLOW_PRIVATE
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise UrlRefused("Enter a valid http:// or https:// URL.") from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused("Enter a valid port.") from None
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
        except (OSError, UnicodeError, ValueError):
            addresses = []
        if not addresses:
            if unresolved_ok:
                return None
            raise UrlRefused(f"The host {host!r} does not resolve.") from None
    if not allow_private:
        for ip in addresses:
            why = _why_not_public(ip)
            if why:
                raise UrlRefused(
                    f"The host {host!r} resolves to {ip} ({why}); webhooks are only sent "
                    "to public addresses."
                )
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=str(addresses[0]))


def delivery_target(url: str) -> Target:
    """Where an attempt connects: check() again, now (the host must resolve)."""
    target = check(url)
    if target is None:  # check() returns None only with unresolved_ok
        raise UrlRefused(f"{url!r} does not resolve.")
    return target


def url_validate(url: str, *, field: str) -> None:
    """ValidationError({field: [why]}) unless `url` may be called back."""
    try:
        check(url, unresolved_ok=True)
    except UrlRefused as exc:
        raise ValidationError({field: [str(exc)]}) from None


def callback_url_validate(url: str) -> None:
    """tasks.extensions' validator of a task's callback_url."""
    url_validate(url, field="callback_url")
