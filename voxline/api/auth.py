"""Optional API keys, the allowed-origins check and per-key and per-client session limits.

Keys are configured as hashes (`VOXLINE_API_KEYS`), one entry per key, comma-separated:

    [label=]sha256:<64 hex digits>[/max_sessions]

`label` names the key in logs (default: `sha256:` and the hash's first 8 hex digits);
`/max_sessions` overrides `VOXLINE_MAX_SESSIONS_PER_KEY` for that key (`/0`: no limit).
`voxline hash-key` makes an entry. A client presents its key as `Authorization: Bearer <key>`,
as the WebSocket subprotocols `token, <key>` (browsers cannot set headers on a WebSocket) or as
`?api_key=<key>`. With keys configured, everything needs one but the probes (`/healthz`,
`/readyz`), Prometheus' `/metrics` and the static browser demo (`/`, `/demo/*`).

Without keys, `VOXLINE_MAX_SESSIONS_PER_CLIENT` bounds the WebSocket sessions one client address
holds open, so that one client cannot take every `VOXLINE_MAX_SESSIONS` slot. The address is the
peer's; when the peer is one of `VOXLINE_TRUSTED_PROXIES` (addresses or CIDRs), it is the
right-most `X-Forwarded-For` address that is not itself a trusted proxy.

A raw key never goes into a log line, an exception or a repr: keys are identified by label.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxline.shared.config import Settings
from voxline.shared.protocol import EXTENSIONS, CloseCode, ErrorCode, error

log = logging.getLogger("voxline.api.auth")

HASH_PREFIX = "sha256:"
# Answer without a key: load balancers and orchestrators probe them (/readyz tells only
# counts and states, never a key, session or text).
# Prometheus scrapes /metrics (counts and latencies only, labelled by engine and outcome).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/metrics"})
# The browser demo's static assets: the page asks for the key itself (api/demo).
PUBLIC_PREFIXES = ("/demo/",)
# The subprotocol a browser offers in front of its key (`new WebSocket(url, ["token", key])`).
TOKEN_SUBPROTOCOL = "token"
QUERY_PARAM = "api_key"

_ENTRY = re.compile(
    r"(?:(?P<label>[A-Za-z0-9_.:-]+)=)?sha256:(?P<hex>[0-9a-fA-F]{64})(?:/(?P<limit>[0-9]+))?"
)
_LABEL = re.compile(r"[A-Za-z0-9_.:-]+")
ENTRY_FORM = "[label=]sha256:<64 hex digits>[/max_sessions]"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AuthConfigError(ValueError):
    """VOXLINE_API_KEYS, VOXLINE_ALLOWED_ORIGINS, VOXLINE_TRUSTED_PROXIES or a session limit
    cannot be used; raised at start-up."""


def hash_key(key: str) -> str:
    """The `sha256:<hex>` form of a key, as VOXLINE_API_KEYS holds it."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key: 256 bits, URL-safe, and a valid subprotocol token."""
    return "vx_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    label: str
    digest: bytes = field(repr=False)
    max_sessions: int | None = None  # None: the global max_sessions_per_key


def parse_keys(spec: str) -> tuple[KeyEntry, ...]:
    """The entries of VOXLINE_API_KEYS. Errors name the entry's position, never its text: an
    operator who pasted a raw key instead of its hash must not find it in a traceback."""
    parts = [part.strip() for part in spec.split(",")]
    entries = [part for part in parts if part]
    if spec.strip() and not entries:
        raise AuthConfigError("VOXLINE_API_KEYS is set but holds no entry")
    keys: list[KeyEntry] = []
    labels: set[str] = set()
    digests: set[bytes] = set()
    for position, entry in enumerate(entries, 1):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise AuthConfigError(
                f"VOXLINE_API_KEYS entry {position} of {len(entries)} is not {ENTRY_FORM}; "
                "it holds key hashes, never keys (make one with `voxline hash-key`)"
            )
        hexdigest = match["hex"].lower()
        label = match["label"] or HASH_PREFIX + hexdigest[:8]
        digest = bytes.fromhex(hexdigest)
        if label in labels:
            raise AuthConfigError(f"VOXLINE_API_KEYS: label {label!r} is used twice")
        if digest in digests:
            raise AuthConfigError(f"VOXLINE_API_KEYS: entry {position} repeats a key hash")
        labels.add(label)
        digests.add(digest)
        limit = int(match["limit"]) if match["limit"] is not None else None
        keys.append(KeyEntry(label, digest, limit))
    return tuple(keys)


def parse_origins(spec: str) -> frozenset[str]:
    origins = set()
    for part in spec.split(","):
        origin = _normalize_origin(part)
        if not origin:
            continue
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise AuthConfigError(
                f"VOXLINE_ALLOWED_ORIGINS: {part.strip()!r} is not an origin "
                "(scheme://host[:port], e.g. https://app.example.com)"
            )
        origins.add(origin)
    return frozenset(origins)


def parse_proxies(spec: str) -> tuple[IPNetwork, ...]:
    """The networks of VOXLINE_TRUSTED_PROXIES: comma-separated addresses or CIDRs."""
    networks: list[IPNetwork] = []
    for part in spec.split(","):
        text = part.strip()
        if not text:
            continue
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise AuthConfigError(
                f"VOXLINE_TRUSTED_PROXIES: {text!r} is not an IP address or CIDR "
                "(e.g. 10.0.0.0/8, 192.168.1.7 or fd00::/8)"
            ) from None
        networks.append(_unmapped_network(network))
    return tuple(networks)


def _unmapped_network(network: IPNetwork) -> IPNetwork:
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.network_address.ipv4_mapped is not None
    ):
        mapped = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    return network


def _parse_ip(text: str) -> IPAddress | None:
    """An address as peers and proxies write it: bare, `[v6]:port` or `v4:port`; IPv4-mapped
    IPv6 addresses are read as IPv4."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def check_label(label: str) -> str:
    if not _LABEL.fullmatch(label):
        raise AuthConfigError(f"a key label may hold letters, digits and _.:- only: {label!r}")
    return label


@dataclass(frozen=True, slots=True)
class Presented:
    """What a client presented: the key (never logged), how, and the subprotocol to accept."""

    key: str | None = field(default=None, repr=False)
    form: str = "none"  # bearer, subprotocol, query, none
    subprotocol: str | None = None


def presented_key(scope: Scope) -> Presented:
    """The key a request carries, from the first form present: bearer header, the
    `token, <key>` subprotocols (WebSocket only), `?api_key=`. Only that form is checked."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    subprotocols: list[str] = list(scope.get("subprotocols") or [])
    # A browser fails the connection unless the server selects one of the offered protocols.
    subprotocol = TOKEN_SUBPROTOCOL if TOKEN_SUBPROTOCOL in subprotocols else None
    scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return Presented(credentials.strip(), "bearer", subprotocol)
    if subprotocol is not None:
        at = subprotocols.index(TOKEN_SUBPROTOCOL) + 1
        key = subprotocols[at] if at < len(subprotocols) else None
        return Presented(key or None, "subprotocol", subprotocol)
    for name, value in parse_qsl(
        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
    ):
        if name == QUERY_PARAM:
            return Presented(value or None, "query", subprotocol)
    return Presented(None, "none", subprotocol)


def redact_query(scope: Scope) -> None:
    """Replace `api_key` in the query string in place: uvicorn logs the path with the query
    (access log, WebSocket "[accepted]" line) from this very scope, after the app has seen it."""
    raw = scope.get("query_string", b"")
    if QUERY_PARAM.encode() not in raw and b"%" not in raw:
        return
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    if any(name == QUERY_PARAM for name, _ in pairs):
        scope["query_string"] = urlencode(
            [(name, "redacted" if name == QUERY_PARAM else value) for name, value in pairs]
        ).encode()


class Authenticator:
    """The parsed auth settings; checks keys and origins."""

    def __init__(
        self,
        keys: Iterable[KeyEntry] = (),
        origins: Iterable[str] = (),
        max_sessions_per_key: int = 0,
        max_sessions_per_client: int = 0,
        trusted_proxies: Iterable[IPNetwork] = (),
    ) -> None:
        self.keys = tuple(keys)
        self.origins = frozenset(origins)
        self.max_sessions_per_key = max_sessions_per_key
        self.max_sessions_per_client = max_sessions_per_client
        self.trusted_proxies = tuple(trusted_proxies)

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        # The session limits' ranges (0: no limit) are Settings' own constraints.
        return cls(
            parse_keys(settings.api_keys),
            parse_origins(settings.allowed_origins),
            settings.max_sessions_per_key,
            settings.max_sessions_per_client,
            parse_proxies(settings.trusted_proxies),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def verify(self, key: str | None) -> KeyEntry | None:
        """The entry the key belongs to. Compared with every configured hash in constant time
        and without stopping at a match, so timing tells nothing about which hash or byte."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found: KeyEntry | None = None
        for entry in self.keys:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found

    def origin_allowed(self, origin: str | None) -> bool:
        """Only browsers send Origin; a client without one (a server-side bot) passes."""
        if not self.origins or origin is None:
            return True
        return _normalize_origin(origin) in self.origins

    def limit(self, entry: KeyEntry) -> int:
        """Sessions the key may hold open on this process; 0 = no limit."""
        return self.max_sessions_per_key if entry.max_sessions is None else entry.max_sessions

    def trusted(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.trusted_proxies)

    def client_address(self, scope: Scope) -> str | None:
        """The address the per-client limit counts: the peer's, or, when the peer is a trusted
        proxy, the right-most X-Forwarded-For address that is not one too (everything left of
        it was written by the client and may be forged). None: no peer address (a Unix socket).
        """
        client = scope.get("client")
        if not client:
            return None
        peer = _parse_ip(str(client[0]))
        if not self.trusted(peer):
            return str(client[0]) if peer is None else str(peer)
        hops = [
            hop.strip()
            for name, value in scope["headers"]
            if name.lower() == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        for hop in reversed(hops):
            address = _parse_ip(hop)
            if not self.trusted(address):
                return str(address) if address is not None else hop[:100]
        # Every hop is a trusted proxy: the request comes from inside; the first hop is it.
        return str(_parse_ip(hops[0])) if hops else str(peer)


class KeySessions:
    """Open WebSocket sessions per key label (or per client address) on this front-end
    process."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()

    def count(self, label: str) -> int:
        return self._open[label]

    def try_acquire(self, label: str, limit: int) -> bool:
        # No await between the check and the increment: atomic on the event loop.
        if limit and self._open[label] >= limit:
            return False
        self._open[label] += 1
        return True

    def release(self, label: str) -> None:
        self._open[label] -= 1
        if self._open[label] <= 0:
            del self._open[label]


@dataclass(frozen=True, slots=True)
class Refusal:
    code: ErrorCode
    message: str
    status: int  # HTTP
    close: CloseCode  # WebSocket


class AuthMiddleware:
    """Pure ASGI, so it guards every route, HTTP and WebSocket, present and future."""

    def __init__(
        self,
        app: ASGIApp,
        auth: Authenticator,
        sessions: KeySessions,
        client_sessions: KeySessions | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.sessions = sessions  # per key label
        # Per client address, without keys.
        self.client_sessions = KeySessions() if client_sessions is None else client_sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        redact_query(scope)
        if scope["type"] == "http" and _public(scope["path"]):
            await self.app(scope, receive, send)
            return
        entry: KeyEntry | None = None
        refusal = self._check_origin(scope)
        if refusal is None and self.auth.enabled:
            entry = self.auth.verify(presented.key)
            if entry is None:
                refusal = _unauthorized(presented)
        if refusal is not None:
            log.info(
                "refused %s %s from %s: %s (key form: %s)",
                scope["type"],
                scope["path"],
                _client(scope),
                refusal.code,
                presented.form,
            )
            await self._refuse(scope, receive, send, refusal, presented.subprotocol)
            return
        if entry is not None:
            scope.setdefault("state", {})["api_key_label"] = entry.label
        if scope["type"] == "http":
            await self.app(scope, receive, send)
            return
        await self._websocket(scope, receive, send, entry, presented.subprotocol)

    async def _websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        entry: KeyEntry | None,
        subprotocol: str | None,
    ) -> None:
        if subprotocol is not None:
            send = _with_subprotocol(send, subprotocol)
        if entry is not None:
            counter, name, limit = self.sessions, entry.label, self.auth.limit(entry)
            what = f"key {entry.label}"
        else:
            address = self.auth.client_address(scope) if self.auth.max_sessions_per_client else None
            if address is None:
                await self.app(scope, receive, send)
                return
            counter, name, limit = self.client_sessions, address, self.auth.max_sessions_per_client
            what = f"client {address}"
        if not counter.try_acquire(name, limit):
            log.info("refused a session of %s: at its limit of %d", what, limit)
            holder = "key" if entry is not None else "client address"
            refusal = Refusal(
                ErrorCode.TOO_MANY_SESSIONS,
                f"this {holder} already holds its limit of {limit} sessions",
                429,
                CloseCode.TRY_AGAIN_LATER,
            )
            await self._refuse(scope, receive, send, refusal, subprotocol)
            return
        log.debug("session of %s (%d open)", what, counter.count(name))
        try:
            await self.app(scope, receive, send)
        finally:
            counter.release(name)

    def _check_origin(self, scope: Scope) -> Refusal | None:
        origin = next((v for k, v in scope["headers"] if k.lower() == b"origin"), None)
        if self.auth.origin_allowed(None if origin is None else origin.decode("latin-1")):
            return None
        return Refusal(
            ErrorCode.FORBIDDEN_ORIGIN,
            "this origin is not allowed",
            403,
            CloseCode.POLICY_VIOLATION,
        )

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, refusal: Refusal, subprotocol: str | None
    ) -> None:
        if scope["type"] == "http":
            await _http_error(refusal)(scope, receive, send)
            return
        # Accept first: a browser sees nothing of a handshake refused with an HTTP status,
        # but reads the error message and the close reason.
        ws = WebSocket(scope, receive, send)
        try:
            if subprotocol is None and EXTENSIONS in (scope.get("subprotocols") or ()):
                # A browser fails a connection that selects none of its offered protocols,
                # and would never see why it was refused.
                subprotocol = EXTENSIONS
            await ws.accept(subprotocol=subprotocol)
            await ws.send_text(json.dumps(error(refusal.code, refusal.message)))
            await ws.close(int(refusal.close), reason=refusal.message[:120])
        except (OSError, RuntimeError, WebSocketDisconnect):
            pass  # the client left already; nothing to tell it


def _unauthorized(presented: Presented) -> Refusal:
    message = (
        "an API key is required (Authorization: Bearer <key>, "
        "subprotocols 'token, <key>' or ?api_key=<key>)"
        if presented.key is None
        else "the API key is not valid"
    )
    return Refusal(ErrorCode.UNAUTHORIZED, message, 401, CloseCode.POLICY_VIOLATION)


def _http_error(refusal: Refusal) -> JSONResponse:
    kind = "unauthorized" if refusal.status == 401 else "forbidden"
    headers = {}
    if refusal.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"message": refusal.message, "type": kind, "code": str(refusal.code)}}
    return JSONResponse(body, status_code=refusal.status, headers=headers)


def _with_subprotocol(send: Send, subprotocol: str) -> Send:
    """Select the offered `token` subprotocol when the app accepts without one (the session
    accepts plainly); a browser fails a connection whose offered protocols are all ignored."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": subprotocol}
        await send(message)

    return wrapped


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


# --- keeping keys out of other libraries' logs ----------------------------------------------

_HEADER_LINE = re.compile(r"(?i)\b(authorization|sec-websocket-protocol)(\s*:\s*)\S.*")
_QUERY_KEY = re.compile(rf"(?i)\b({QUERY_PARAM}=)[^&\s\"']+")


class RedactKeys(logging.Filter):
    """websockets (inside uvicorn) logs request lines and headers at DEBUG: redact keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _QUERY_KEY.sub(r"\1redacted", _HEADER_LINE.sub(r"\1\2[redacted]", message))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTOR = RedactKeys()
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access")


def install_log_redaction(names: Iterable[str] = SERVER_LOGGERS) -> None:
    """Idempotent; logger filters survive uvicorn's logging dictConfig."""
    for name in names:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


def describe(auth: Authenticator) -> dict[str, Any]:
    """What is configured, safe to log: labels and limits only."""
    return {
        "keys": [entry.label for entry in auth.keys],
        "origins": sorted(auth.origins),
        "max_sessions_per_key": auth.max_sessions_per_key,
        "max_sessions_per_client": auth.max_sessions_per_client,
        "trusted_proxies": [str(net) for net in auth.trusted_proxies],
    }
