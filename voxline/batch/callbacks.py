"""Batch callbacks: the job's JSON POSTed to the `callback_url` it was created with, without
letting that URL reach what it should not (SSRF).

- Only http and https URLs are taken (checked when the job is created, `check_url`).
- The host is resolved once, when the callback is made. Every address it resolves to must be
  public: one that is loopback, private, link-local, site-local, multicast, reserved,
  unspecified or otherwise not global (an IPv4-mapped or 6to4 IPv6 address is judged by the
  IPv4 address inside) refuses the delivery, unless it lies in `callback_allow` (CIDRs).
- The connection goes to an address of that same resolution, never to a name resolved again
  (so a DNS answer that changes between the check and the connect, "DNS rebinding", changes
  nothing): `http.client` is handed a socket opened to the vetted address, while the Host
  header and TLS (SNI and the certificate check) keep the URL's host name. No proxy from the
  environment is used, and redirects are not followed: a 3xx is a failed delivery.
- What the job records (`callback_error`) is one of three fixed messages, never the reason
  (a refused connection, a timeout) that would turn callbacks into a port scanner; the log
  says more, for the operator.
- Credentials in the URL (user info, and query parameters whose names look like a token, key,
  secret, password or signature) are redacted wherever the URL is logged or shown.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = {"http": 80, "https": 443}
UNREACHABLE = "delivery failed (unreachable)"
NOT_ALLOWED = "delivery failed (address not allowed)"
REDACTED = "redacted"
TIMEOUT = 10.0
# What is read of a receiver's reply (its body means nothing to us).
_REPLY_BYTES = 64 * 1024
# Query parameter names that hold credentials: a substring of the name, or the whole name.
_SECRET_PARAM = re.compile(
    r"(?i)token|key|secret|passw|signature|credential|auth|session|^(sig|pwd|pass|code)$"
)


def status_failed(status: int) -> str:
    return f"delivery failed (status {status})"


class CallbackConfigError(ValueError):
    """VOXLINE_CALLBACK_ALLOW cannot be used; raised at start-up."""


def parse_allow(spec: str) -> tuple[IPNetwork, ...]:
    """The networks of `callback_allow` (comma-separated CIDRs; a bare address is a /32 or
    /128)."""
    networks = []
    for part in spec.split(","):
        if not part.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError:
            raise CallbackConfigError(
                f"VOXLINE_CALLBACK_ALLOW: {part.strip()!r} is not a CIDR (e.g. 10.1.2.0/24)"
            ) from None
    return tuple(networks)


def check_url(url: str) -> str | None:
    """Why `url` cannot be a callback URL (None: it can): http or https, with a host and a
    valid port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL (bad host or port)"
    if parts.scheme.lower() not in SCHEMES:
        return "only http and https URLs are taken"
    if not parts.hostname:
        return "the URL has no host"
    if port == 0:
        return "not a valid URL (bad host or port)"
    return None


def redact_url(url: str) -> str:
    """`url` with its credentials replaced: user info, the values of query parameters that
    look like secrets, and the fragment. For logs and the job's status."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED  # not a URL we could take apart: show nothing of it
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{REDACTED}@{netloc}"
    query = "&".join(_redact_param(piece) for piece in parts.query.split("&"))
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_param(piece: str) -> str:
    name = piece.partition("=")[0]
    if _SECRET_PARAM.search(unquote(name.replace("+", " "))):
        return f"{name}={REDACTED}"
    return piece


def address_allowed(address: IPAddress, allow: Iterable[IPNetwork] = ()) -> bool:
    """Whether a callback may connect to `address`: in `allow`, or public."""
    inner = _embedded_ipv4(address)
    candidates = [address] if inner is None else [address, inner]
    allow = tuple(allow)
    if any(ip in net for ip in candidates for net in allow if ip.version == net.version):
        return True
    return not any(_special(ip) for ip in candidates)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped or address.sixtofour
    return None


def _special(ip: IPAddress) -> bool:
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or not ip.is_global
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """A delivery attempt: `error` is what the job records ("" when delivered), `detail` what
    the log says (never the URL), `retry` whether another attempt may fare better."""

    error: str = ""
    detail: str = ""
    retry: bool = False

    @property
    def delivered(self) -> bool:
        return not self.error


# (family, sockaddr) as getaddrinfo gives them.
Address = tuple[int, tuple[object, ...]]


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to, once (tests replace it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def open_socket(family: int, sockaddr: tuple[object, ...], timeout: float | None) -> socket.socket:
    """A TCP connection to a vetted address (tests replace it)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _ip(sockaddr: tuple[object, ...]) -> IPAddress:
    return ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])  # no IPv6 scope id


def deliver(
    url: str, body: bytes, allow: Iterable[IPNetwork] = (), timeout: float = TIMEOUT
) -> Outcome:
    """POST `body` (JSON) to `url` once, as the module's docstring says. Blocking: run it in a
    thread."""
    if (why := check_url(url)) is not None:  # checked at creation too; a stored one may be old
        return Outcome(NOT_ALLOWED, why)
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    port = parts.port or SCHEMES[scheme]
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        return Outcome(UNREACHABLE, f"cannot resolve the host ({type(exc).__name__})", retry=True)
    try:
        refused = [str(_ip(a)) for _, a in addresses if not address_allowed(_ip(a), allow)]
    except ValueError:
        return Outcome(NOT_ALLOWED, "the host resolved to something that is no IP address")
    if refused or not addresses:
        return Outcome(NOT_ALLOWED, f"the host resolves to {', '.join(refused) or 'nothing'}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    last = ""
    for family, sockaddr in addresses:  # every one vetted above; tried in resolver order
        try:
            status = _post(scheme, host, port, family, sockaddr, target, body, timeout)
        except (OSError, http.client.HTTPException) as exc:
            last = f"{_ip(sockaddr)}: {type(exc).__name__}"
            if isinstance(exc, OSError) and exc.strerror:
                last += f" ({exc.strerror})"
            continue
        if 200 <= status < 300:
            return Outcome()
        # A redirect is not followed, and a refusal (4xx) would be refused again; a server
        # error or 429 may pass on the next try.
        return Outcome(
            status_failed(status), f"HTTP {status}", retry=status >= 500 or status in (408, 429)
        )
    return Outcome(UNREACHABLE, last, retry=True)


def _post(
    scheme: str,
    host: str,
    port: int,
    family: int,
    sockaddr: tuple[object, ...],
    target: str,
    body: bytes,
    timeout: float,
) -> int:
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = _PinnedHTTPS(host, port, timeout, (family, sockaddr))
    else:
        connection = _PinnedHTTP(host, port, timeout, (family, sockaddr))
    try:
        connection.request(
            "POST",
            target,
            body=body,
            headers={"Content-Type": "application/json", "User-Agent": "voxline-batch"},
        )
        response = connection.getresponse()
        response.read(_REPLY_BYTES)
        return response.status
    finally:
        connection.close()


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to one vetted address; the Host header still names `host`."""

    def __init__(self, host: str, port: int, timeout: float, address: Address) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = open_socket(*self._address, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to one vetted address; SNI and the certificate check use `host`."""

    def __init__(self, host: str, port: int, timeout: float, address: Address) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        sock = open_socket(*self._address, self.timeout)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
