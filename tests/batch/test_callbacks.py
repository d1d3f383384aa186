"""batch/callbacks.py: where a batch callback may go (SSRF), what it tells, what it redacts.

Only local listeners are ever connected to. An address that must be refused and cannot be
listened on here (10.x, 169.254.169.254, multicast…) is checked with the connect replaced by a
recorder: were the check broken, the recorder would see the attempt (and nothing leaves this
machine either way)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from voxline.api.batch import batch_router
from voxline.batch import callbacks
from voxline.batch.arq_worker import make_worker
from voxline.batch.callbacks import (
    NOT_ALLOWED,
    UNREACHABLE,
    CallbackConfigError,
    check_url,
    deliver,
    parse_allow,
    redact_url,
)
from voxline.shared.config import Settings

BODY = b'{"id": "x", "status": "done"}'


@dataclass
class Listener:
    url: str
    received: list[dict[str, object]] = field(default_factory=list)
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)


def _listen(host: str = "127.0.0.1") -> Iterator[Listener]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = Listener("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            listener.received.append({"path": self.path, "body": body, **dict(self.headers)})
            self.send_response(listener.status)
            for name, value in listener.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST  # noqa: N815 (a followed redirect would GET)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = family

    server = Server((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    listener.url = f"http://{shown}:{server.server_address[1]}/hook"
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    yield from _listen()


@pytest.fixture
def other_listener() -> Iterator[Listener]:
    yield from _listen()


@pytest.fixture
def listener6() -> Iterator[Listener]:
    yield from _listen("::1")


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """Every connect deliver() attempts; none is made."""
    attempts: list[tuple[object, ...]] = []

    def record(family: int, sockaddr: tuple[object, ...], timeout: float) -> socket.socket:
        attempts.append(sockaddr)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(callbacks, "open_socket", record)
    return attempts


def _resolving(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> list[str]:
    """Make every host name resolve to `addresses`; returns the names looked up."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
        asked.append(host)
        return [
            (socket.AF_INET6, (a, port, 0, 0)) if ":" in a else (socket.AF_INET, (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(callbacks, "resolve", resolve)
    return asked


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_listeners_are_refused_without_an_allow(host: str) -> None:
    for running in _listen(host):
        outcome = deliver(running.url, BODY)
        assert outcome.error == NOT_ALLOWED and not outcome.retry
        assert running.received == []


REFUSED = [
    "127.0.0.1",
    "127.9.9.9",  # loopback
    "::1",
    "10.1.2.3",  # private
    "172.16.0.1",
    "192.168.1.10",
    "fc00::1",
    "169.254.169.254",  # link-local: the cloud metadata service
    "fe80::1",
    "224.0.0.1",  # multicast
    "ff02::1",
    "240.0.0.1",  # reserved
    "0.0.0.0",  # unspecified
    "::",
    "100.64.0.1",  # shared address space (CGNAT): not global
    "fec0::1",  # site-local
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]


@pytest.mark.parametrize("address", REFUSED)
def test_every_non_public_address_class_is_refused(
    address: str, connects: list[tuple[object, ...]]
) -> None:
    host = f"[{address}]" if ":" in address else address
    outcome = deliver(f"http://{host}:8080/hook", BODY)
    assert outcome.error == NOT_ALLOWED, outcome
    assert connects == []


@pytest.mark.parametrize("address", REFUSED)
def test_a_name_resolving_to_such_an_address_is_refused(
    address: str, monkeypatch: pytest.MonkeyPatch, connects: list[tuple[object, ...]]
) -> None:
    _resolving(monkeypatch, address)
    assert deliver("https://hooks.example.com/done", BODY).error == NOT_ALLOWED
    assert connects == []


def test_one_bad_address_among_public_ones_refuses(
    monkeypatch: pytest.MonkeyPatch, connects: list[tuple[object, ...]]
) -> None:
    _resolving(monkeypatch, "93.184.216.34", "2606:2800:220:1::1", "10.0.0.7")
    assert deliver("https://hooks.example.com/done", BODY).error == NOT_ALLOWED
    assert connects == []


def test_the_connect_goes_to_the_address_vetted_not_a_new_lookup(
    monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    # A public answer, checked once; the socket is opened to that very answer (here relayed to
    # the local listener), with the URL's host name in the Host header.
    asked = _resolving(monkeypatch, "93.184.216.34")
    opened: list[tuple[object, ...]] = []
    port = int(listener.url.rsplit(":", 1)[1].split("/")[0])
    real_open = callbacks.open_socket

    def relay(family: int, sockaddr: tuple[object, ...], timeout: float) -> socket.socket:
        opened.append(sockaddr)
        return real_open(socket.AF_INET, ("127.0.0.1", port), timeout)

    monkeypatch.setattr(callbacks, "open_socket", relay)
    assert deliver("http://hooks.example.com:8080/done?x=1", BODY).delivered
    assert asked == ["hooks.example.com"]  # resolved once
    assert opened == [("93.184.216.34", 8080)]
    (request,) = listener.received
    assert request["Host"] == "hooks.example.com:8080" and request["path"] == "/done?x=1"


def test_an_allowed_local_listener_gets_the_post(listener: Listener, listener6: Listener) -> None:
    allow = parse_allow("127.0.0.1/32")
    outcome = deliver(listener.url, BODY, allow)
    assert outcome.delivered, outcome
    (request,) = listener.received
    assert request["body"] == BODY and request["Content-Type"] == "application/json"
    # The allow names 127.0.0.1 only: ::1 stays refused.
    assert deliver(listener6.url, BODY, allow).error == NOT_ALLOWED
    assert listener6.received == []
    assert deliver(listener6.url, BODY, parse_allow("::1/128")).delivered


def test_a_redirect_is_not_followed(listener: Listener, other_listener: Listener) -> None:
    listener.status = 302
    listener.headers = {"Location": other_listener.url}
    outcome = deliver(listener.url, BODY, parse_allow("127.0.0.0/8"))
    assert outcome.error == "delivery failed (status 302)" and not outcome.retry
    assert len(listener.received) == 1
    assert other_listener.received == []


def test_what_a_failure_tells_is_fixed(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    allow = parse_allow("127.0.0.1")
    listener.status = 500
    outcome = deliver(listener.url, BODY, allow)
    assert (outcome.error, outcome.retry) == ("delivery failed (status 500)", True)
    listener.status = 404
    assert deliver(listener.url, BODY, allow).error == "delivery failed (status 404)"
    # A closed port: nothing says "refused" (a port scanner would read it).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    outcome = deliver(f"http://127.0.0.1:{closed}/hook", BODY, allow)
    assert outcome.error == UNREACHABLE == "delivery failed (unreachable)" and outcome.retry

    def unresolvable(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(callbacks, "resolve", unresolvable)
    assert deliver("https://nowhere.example/x", BODY).error == UNREACHABLE


def test_https_is_tls_to_the_vetted_address(listener: Listener) -> None:
    # The listener speaks plain HTTP: the TLS handshake fails, and nothing is POSTed in clear.
    https = listener.url.replace("http://", "https://")
    outcome = deliver(https, BODY, parse_allow("127.0.0.1/32"))
    assert outcome.error == UNREACHABLE and "SSL" in outcome.detail, outcome
    assert listener.received == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "http://",
        "http://:80/x",
        "http://example.com:99999/x",
        "http://example.com:0/x",
        "http://example.com:port/x",
    ],
)
def test_urls_that_are_no_http_callback_are_refused(
    url: str, monkeypatch: pytest.MonkeyPatch, connects: list[tuple[object, ...]]
) -> None:
    asked = _resolving(monkeypatch, "93.184.216.34")
    assert check_url(url) is not None
    assert deliver(url, BODY).error == NOT_ALLOWED
    assert asked == [] and connects == []


@pytest.mark.parametrize(
    "url", ["http://example.com/x", "https://example.com:8443/done?id=1", "HTTPS://[2001:db8::1]/"]
)
def test_http_urls_are_taken(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.com/done?x=1", "https://example.com/done?x=1"),
        ("https://bob:hunter2@example.com/h", "https://redacted@example.com/h"),
        ("https://tok@example.com:8443/h", "https://redacted@example.com:8443/h"),
        (
            "https://example.com/h?token=t1&api_key=k1&x=1&Secret=s1&password=p1&sig=g1",
            "https://example.com/h?token=redacted&api_key=redacted&x=1&Secret=redacted"
            "&password=redacted&sig=redacted",
        ),
        (
            "https://s3.example.com/b?X-Amz-Signature=abc&X-Amz-Credential=def&n=2",
            "https://s3.example.com/b?X-Amz-Signature=redacted&X-Amz-Credential=redacted&n=2",
        ),
        ("http://[::1]:9000/h?access%5Ftoken=zz", "http://[::1]:9000/h?access%5Ftoken=redacted"),
        ("https://example.com/h#access_token=zz", "https://example.com/h#redacted"),
    ],
)
def test_credentials_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_allow_setting_is_parsed_or_refused() -> None:
    assert [str(n) for n in parse_allow(" 127.0.0.1/32, 10.1.0.0/16 ,::1,")] == [
        "127.0.0.1/32",
        "10.1.0.0/16",
        "::1/128",
    ]
    assert parse_allow("") == ()
    with pytest.raises(CallbackConfigError, match="VOXLINE_CALLBACK_ALLOW: 'localhost'"):
        parse_allow("127.0.0.1/32,localhost")


def test_a_bad_allow_setting_fails_the_processes_at_start_up() -> None:
    bad = Settings(callback_allow="10.0.0.0/33")
    with pytest.raises(CallbackConfigError):
        make_worker(bad)  # voxline arq
    with pytest.raises(CallbackConfigError):
        batch_router(bad)  # the front end
