"""API keys, the allowed-origins check and per-key and per-client session limits
(api/auth.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.harness import Client, Pipeline, start_pipeline
from voxline.api import auth
from voxline.api.app import create_app
from voxline.api.auth import (
    AuthConfigError,
    Authenticator,
    KeyEntry,
    KeySessions,
    RedactKeys,
    hash_key,
    new_key,
    parse_keys,
    parse_origins,
    parse_proxies,
    presented_key,
    redact_query,
)
from voxline.cli import build_parser, main
from voxline.say import say
from voxline.shared.audio.wav import parse_wav
from voxline.shared.config import Settings

KEY = "vx_test-key-alpha-0123456789"
OTHER_KEY = "vx_test-key-beta-9876543210"
WRONG_KEY = "vx_wrong-key-never-configured"
HEX = hashlib.sha256(KEY.encode()).hexdigest()
# Two keys: `alpha` (the global per-key limit) and `beta` (at most one session of its own).
KEYS = f"alpha={hash_key(KEY)},beta={hash_key(OTHER_KEY)}/1"
ORIGIN = "https://app.example.com"


# --- units -----------------------------------------------------------------------------------


def test_hash_key_is_the_sha256_entry_form() -> None:
    assert hash_key(KEY) == "sha256:" + HEX
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", hash_key("é"))


def test_new_keys_are_random_and_valid_subprotocol_tokens() -> None:
    keys = {new_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        # RFC 7230 token characters only, so `new WebSocket(url, ["token", key])` works.
        assert re.fullmatch(r"vx_[A-Za-z0-9_-]{43}", key), key


def test_parse_keys_labels_limits_and_spacing() -> None:
    other = hashlib.sha256(b"other").hexdigest()
    third = hashlib.sha256(b"third").hexdigest()
    entries = parse_keys(f" sha256:{HEX.upper()} , bot-1=sha256:{other}/5,\n web=sha256:{third}/0,")
    assert [e.label for e in entries] == [f"sha256:{HEX[:8]}", "bot-1", "web"]
    assert [e.max_sessions for e in entries] == [None, 5, 0]
    assert entries[0].digest == bytes.fromhex(HEX)
    assert parse_keys("") == () and parse_keys("   ") == ()


@pytest.mark.parametrize(
    "spec",
    [
        KEY,  # a raw key pasted instead of its hash
        f"label={KEY}",
        "sha256:abc123",
        f"md5:{HEX}",
        f"sha256:{HEX}/many",
        f"bad label=sha256:{HEX}",
        f"sha256:{HEX}0",
        " , ",
    ],
)
def test_bad_key_entries_fail_without_echoing_them(spec: str) -> None:
    with pytest.raises(AuthConfigError) as caught:
        parse_keys(spec)
    assert "VOXLINE_API_KEYS" in str(caught.value)
    assert KEY not in str(caught.value) and "abc123" not in str(caught.value)


def test_duplicate_labels_or_keys_are_refused() -> None:
    other = hash_key("other")
    with pytest.raises(AuthConfigError, match="label 'a' is used twice"):
        parse_keys(f"a={hash_key(KEY)},a={other}")
    with pytest.raises(AuthConfigError, match="entry 2 repeats"):
        parse_keys(f"a={hash_key(KEY)},b={hash_key(KEY)}")


@pytest.mark.parametrize(
    "overrides",
    [
        {"api_keys": KEY},
        {"allowed_origins": "app.example.com"},
        {"trusted_proxies": "10.0.0.0/33"},
        {"trusted_proxies": "10.0.0.1, proxy.internal"},
    ],
)
def test_bad_auth_settings_stop_the_app_at_creation(overrides: dict[str, Any]) -> None:
    with pytest.raises(AuthConfigError) as caught:
        create_app(Settings(**overrides))
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("name", ["max_sessions_per_key", "max_sessions_per_client"])
def test_negative_session_limits_are_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # 0 is "no limit"; below it Settings itself refuses, naming the variable.
    monkeypatch.setenv(f"VOXLINE_{name.upper()}", "-1")
    with pytest.raises(
        ValueError, match=f"VOXLINE_{name.upper()}='-1'.*greater than or equal to 0"
    ):
        Settings.from_env()


def test_bad_keys_from_the_environment_stop_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_API_KEYS", f"sha256:{HEX[:10]}")
    with pytest.raises(AuthConfigError, match="entry 1 of 1"):
        create_app(Settings.from_env())


def test_bad_trusted_proxies_name_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_TRUSTED_PROXIES", "10.0.0.0/8, 10.0.0.300")
    with pytest.raises(AuthConfigError, match=r"VOXLINE_TRUSTED_PROXIES: '10\.0\.0\.300' is not"):
        create_app(Settings.from_env())


def test_parse_proxies() -> None:
    assert parse_proxies("") == () and parse_proxies(" , ") == ()
    assert parse_proxies(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8,::ffff:172.16.0.0/108") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("172.16.0.0/12"),  # IPv4-mapped: read as IPv4
    )
    assert parse_proxies("10.1.2.3/8") == (ipaddress.ip_network("10.0.0.0/8"),)


def _peer(address: str, *forwarded: str) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"type": "websocket", "headers": headers, "client": (address, 50000)}


def test_client_address_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    checker = Authenticator(trusted_proxies=parse_proxies("10.0.0.0/8,fd00::/8"))
    # An untrusted peer is the client, whatever it claims.
    assert checker.client_address(_peer("203.0.113.9", "198.51.100.1")) == "203.0.113.9"
    assert Authenticator().client_address(_peer("10.0.0.2", "198.51.100.1")) == "10.0.0.2"
    # A trusted proxy: the right-most hop that is not a trusted proxy; hops left of it may be
    # forged by the client.
    assert checker.client_address(_peer("10.0.0.2", "198.51.100.1")) == "198.51.100.1"
    assert checker.client_address(_peer("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.9.9.9")) == (
        "198.51.100.1"
    )
    # Several headers are one list, in order.
    assert checker.client_address(_peer("10.0.0.2", "6.6.6.6", "198.51.100.1")) == "198.51.100.1"
    # Ports, brackets and IPv4-mapped IPv6 addresses, from the peer or a hop.
    assert checker.client_address(_peer("::ffff:10.0.0.2", "198.51.100.1:4711")) == "198.51.100.1"
    assert checker.client_address(_peer("fd00::1", "[2001:db8::7]:443")) == "2001:db8::7"
    assert checker.client_address(_peer("::ffff:203.0.113.9")) == "203.0.113.9"
    # A trusted proxy without the header, or a chain of trusted proxies only.
    assert checker.client_address(_peer("10.0.0.2")) == "10.0.0.2"
    assert checker.client_address(_peer("10.0.0.2", "10.5.5.5, 10.6.6.6")) == "10.5.5.5"
    # No peer address (a Unix socket): nothing to count.
    assert checker.client_address({"type": "websocket", "headers": [], "client": None}) is None


def test_origins_are_normalized() -> None:
    assert parse_origins(" https://App.Example.com/ ,http://localhost:3000") == {
        "https://app.example.com",
        "http://localhost:3000",
    }
    checker = Authenticator(origins=parse_origins(ORIGIN))
    assert checker.origin_allowed("HTTPS://APP.EXAMPLE.COM")
    assert not checker.origin_allowed("https://evil.example")
    assert checker.origin_allowed(None)  # not a browser
    assert Authenticator().origin_allowed("https://evil.example")  # no list: any


def test_verify_finds_the_key_and_nothing_else() -> None:
    checker = Authenticator(parse_keys(KEYS))
    assert checker.enabled and not Authenticator().enabled
    alpha = checker.verify(KEY)
    beta = checker.verify(OTHER_KEY)
    assert alpha is not None and alpha.label == "alpha"
    assert beta is not None and beta.label == "beta" and checker.limit(beta) == 1
    for bad in (WRONG_KEY, "", None, HEX, hash_key(KEY)):
        assert checker.verify(bad) is None


def test_verify_compares_in_constant_time_against_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checker = Authenticator(parse_keys(f"a={hash_key(KEY)},b={hash_key('b')},c={hash_key('c')}"))
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    entry = checker.verify(KEY)  # matches the first: no early exit
    assert entry is not None and entry.label == "a"
    assert len(calls) == 3 and all(len(a) == len(b) == 32 for a, b in calls)
    assert checker.verify(WRONG_KEY) is None and len(calls) == 6


def test_limits_fall_back_to_the_global_setting() -> None:
    checker = Authenticator(parse_keys(KEYS + f",free={hash_key('x')}/0"), max_sessions_per_key=3)
    assert [checker.limit(e) for e in checker.keys] == [3, 1, 0]


def test_reprs_hold_no_key_material() -> None:
    entry = parse_keys(f"alpha={hash_key(KEY)}")[0]
    presented = presented_key(_scope(headers=[(b"authorization", f"Bearer {KEY}".encode())]))
    assert presented.key == KEY
    for text in (repr(entry), repr(presented), str(entry)):
        assert KEY not in text and HEX not in text and HEX[:16] not in text
    assert "alpha" in repr(entry) and "bearer" in repr(presented)


def _scope(
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
    query: bytes = b"",
) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "websocket", "headers": headers or [], "query_string": query}
    if subprotocols is not None:
        scope["subprotocols"] = subprotocols
    return scope


def test_presented_key_forms_and_their_order() -> None:
    bearer = [(b"authorization", f"bearer  {KEY} ".encode())]
    sub = ["token", OTHER_KEY]
    query = f"x=1&api_key={WRONG_KEY}".encode()
    assert presented_key(_scope(bearer, sub, query)) == auth.Presented(KEY, "bearer", "token")
    assert presented_key(_scope(None, sub, query)) == auth.Presented(
        OTHER_KEY, "subprotocol", "token"
    )
    assert presented_key(_scope(None, None, query)) == auth.Presented(WRONG_KEY, "query", None)
    assert presented_key(_scope()) == auth.Presented(None, "none", None)
    # `token` alone is still answered with the token subprotocol (a browser needs it).
    assert presented_key(_scope(subprotocols=["token"])) == auth.Presented(
        None, "subprotocol", "token"
    )
    # Another scheme (a proxy's Basic auth) is not a key.
    basic = [(b"authorization", b"Basic dXNlcjpwYXNz")]
    assert presented_key(_scope(basic)).form == "none"


def test_the_query_key_is_redacted_in_the_scope() -> None:
    scope = _scope(query=f"a=1&api_key={KEY}&b=2".encode())
    redact_query(scope)
    assert scope["query_string"] == b"a=1&api_key=redacted&b=2"
    encoded = _scope(query=f"api%5Fkey={KEY}".encode())
    redact_query(encoded)
    assert KEY.encode() not in encoded["query_string"]
    untouched = _scope(query=b"a=1")
    redact_query(untouched)
    assert untouched["query_string"] == b"a=1"


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("< %s: %s", ("Authorization", f"Bearer {KEY}")),
        ("< %s: %s", ("Sec-WebSocket-Protocol", f"token, {KEY}")),
        ("< GET %s HTTP/1.1", (f"/v1/audio/speech/stream?api_key={KEY}&x=1",)),
    ],
)
def test_header_dumps_are_redacted(msg: str, args: tuple[str, ...]) -> None:
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, msg, args, None)
    assert RedactKeys().filter(record)
    assert KEY not in record.getMessage() and "redacted" in record.getMessage()


def test_key_sessions_count_per_label() -> None:
    sessions = KeySessions()
    assert sessions.try_acquire("a", 2) and sessions.try_acquire("a", 2)
    assert not sessions.try_acquire("a", 2) and sessions.count("a") == 2
    assert sessions.try_acquire("b", 2)  # another key has its own count
    sessions.release("a")
    assert sessions.try_acquire("a", 2)
    assert all(sessions.try_acquire("c", 0) for _ in range(50))  # 0: no limit


def test_key_entry_is_frozen() -> None:
    entry = KeyEntry("a", b"\0" * 32)
    with pytest.raises(AttributeError):
        entry.label = "b"  # type: ignore[misc]


# --- the `voxline hash-key` command ---------------------------------------------------------


def test_hash_key_command_with_an_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", KEY]) == 0
    assert capsys.readouterr().out == hash_key(KEY) + "\n"


def test_hash_key_command_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(KEY + "\n"))
    assert main(["hash-key", "--label", "bot"]) == 0
    assert capsys.readouterr().out == f"bot={hash_key(KEY)}\n"


def test_hash_key_command_makes_a_new_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "--new", "--label", "web"]) == 0
    key, entry = capsys.readouterr().out.splitlines()
    found = Authenticator(parse_keys(entry)).verify(key)
    assert key.startswith("vx_") and found is not None and found.label == "web"


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["hash-key", "--new", KEY], "", "not both"),
        (["hash-key"], "\n", "empty"),
        (["hash-key", KEY, "--label", "a b"], "", "label"),
    ],
)
def test_hash_key_command_errors(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str, message: str
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit, match=message):
        main(argv)


# --- through the real server -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(
    p: Pipeline,
    *,
    key: str | None = None,
    form: str = "bearer",
    origin: str | None = None,
    source: str | None = None,
    forwarded_for: str | None = None,
) -> AsyncIterator[Client]:
    """`source`: the local address to connect from (any of 127.0.0.0/8 reaches the server)."""
    url, headers, subprotocols = p.ws_url, None, ["voxline.v1"]
    if key is not None and form == "bearer":
        headers = {"Authorization": f"Bearer {key}"}
    elif key is not None and form == "subprotocol":
        subprotocols = ["voxline.v1", "token", key]
    elif key is not None and form == "query":
        url += f"?api_key={key}"
    if forwarded_for is not None:
        headers = {**(headers or {}), "X-Forwarded-For": forwarded_for}
    async with websockets.connect(
        url,
        additional_headers=headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        origin=origin,  # type: ignore[arg-type]
        max_size=None,
        local_addr=None if source is None else (source, 0),
    ) as ws:
        yield Client(ws)


async def _speaks(c: Client) -> None:
    await c.send("session.config", response_format="pcm")
    ready = await c.expect("session.ready")
    assert ready["session_id"]
    await c.send("input.text", text="Let me in.")
    await c.send("input.done")
    sentences, _ = await c.utterance()
    assert [s.start["sentence_text"] for s in sentences] == ["Let me in."]


async def _refused(c: Client, code: str, close: int) -> None:
    """The server speaks first: an error, then the close; no session is opened."""
    error = await c.expect("error")
    assert error["code"] == code and error["message"]
    assert KEY not in error["message"] and WRONG_KEY not in error["message"]
    assert await c.closed() == close
    assert [m["type"] for m in c.received if isinstance(m, dict)] == ["error"]


def _key_sessions(p: Pipeline) -> KeySessions:
    return p.server.config.app.state.key_sessions


@pytest.mark.parametrize("form", ["bearer", "subprotocol", "query"])
async def test_each_key_form_opens_a_session(redis_url: str, key_prefix: str, form: str) -> None:
    async with start_pipeline(redis_url, key_prefix, api_keys=KEYS) as p:
        async with connect(p, key=KEY, form=form) as c:
            # Offered, voxline.v1 is the subprotocol a session selects (token's job is done).
            assert c.ws.subprotocol == "voxline.v1"
            await _speaks(c)
            assert _key_sessions(p).count("alpha") == 1


@pytest.mark.parametrize(
    ("key", "form"),
    [
        (None, "bearer"),
        (WRONG_KEY, "bearer"),
        (WRONG_KEY, "subprotocol"),
        (WRONG_KEY, "query"),
        (hash_key(KEY), "bearer"),  # the hash is not the key
    ],
)
async def test_no_or_wrong_key_is_refused_1008(
    redis_url: str, key_prefix: str, key: str | None, form: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, api_keys=KEYS) as p:
        async with connect(p, key=key, form=form) as c:
            # An offered subprotocol is selected even on refusal, or a browser sees no reason.
            assert c.ws.subprotocol == ("token" if form == "subprotocol" else "voxline.v1")
            await _refused(c, "unauthorized", 1008)
            assert c.ws.close_reason and "key" in c.ws.close_reason
        assert p.total("taken") == 0 and not _key_sessions(p).count("alpha")


async def test_sessions_need_no_key_without_keys(pipeline: Pipeline) -> None:
    async with connect(pipeline, key=WRONG_KEY, form="subprotocol") as c:
        assert c.ws.subprotocol == "voxline.v1"
        await _speaks(c)
    # A browser that offers only `token, <key>` still gets one of its protocols selected.
    async with websockets.connect(pipeline.ws_url, subprotocols=["token", WRONG_KEY]) as ws:
        assert ws.subprotocol == "token"
        await ws.send(json.dumps({"type": "session.config", "response_format": "pcm"}))
        await ws.send(json.dumps({"type": "input.text", "text": "Hi."}))
        await ws.send(json.dumps({"type": "input.done"}))
        assert json.loads(await ws.recv())["type"] == "audio.start"  # no session.ready


async def test_http_routes_need_a_key_except_probes(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, api_keys=KEYS) as p:
        async with httpx.AsyncClient(base_url=p.http) as http:
            for path in ("/v1/voices", "/v1/models", "/openapi.json", "/docs", "/no/such/route"):
                for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"}):
                    refused = await http.get(path, headers=headers)
                    assert refused.status_code == 401, path
                    assert refused.headers["www-authenticate"] == "Bearer"
                    body = refused.json()["error"]
                    assert body["type"] == body["code"] == "unauthorized" and body["message"]
            speech = await http.post("/v1/audio/speech", json={"input": "Hello."})
            assert speech.status_code == 401
            bearer = {"Authorization": f"Bearer {KEY}"}
            voices = await http.get("/v1/voices", headers=bearer)
            assert voices.status_code == 200 and voices.json()["workers"] == 1
            assert (await http.get("/v1/voices", params={"api_key": OTHER_KEY})).status_code == 200
            # The subprotocol form is a WebSocket thing: it opens no HTTP route.
            sub = {"Sec-WebSocket-Protocol": f"token, {KEY}"}
            assert (await http.get("/v1/voices", headers=sub)).status_code == 401
            assert (await http.get("/no/such/route", headers=bearer)).status_code == 404
            # Probes answer without a key: orchestrators send none.
            for headers in ({}, {"Authorization": f"Bearer {WRONG_KEY}"}):
                health = await http.get("/healthz", headers=headers)
                assert health.status_code == 200 and health.json() == {"status": "ok"}
                ready = await http.get("/readyz", headers=headers)
                assert ready.status_code == 200 and ready.json()["workers"] == 1
            await p.stop_workers()
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503


@pytest.mark.parametrize("with_keys", [True, False])
async def test_allowed_origins(redis_url: str, key_prefix: str, with_keys: bool) -> None:
    keys = KEYS if with_keys else ""
    async with start_pipeline(
        redis_url, key_prefix, api_keys=keys, allowed_origins=f"{ORIGIN},http://localhost:3000"
    ) as p:
        async with connect(p, key=KEY, origin=ORIGIN) as c:
            await _speaks(c)
        async with connect(p, key=KEY) as c:  # no Origin: not a browser
            await _speaks(c)
        async with connect(p, key=KEY, origin="https://evil.example") as c:
            await _refused(c, "forbidden_origin", 1008)
        async with httpx.AsyncClient(base_url=p.http) as http:
            bearer = {"Authorization": f"Bearer {KEY}"}
            evil = await http.get(
                "/v1/voices", headers={**bearer, "Origin": "https://evil.example"}
            )
            assert evil.status_code == 403 and evil.json()["error"]["code"] == "forbidden_origin"
            good = await http.get(
                "/v1/voices", headers={**bearer, "Origin": "http://localhost:3000"}
            )
            assert good.status_code == 200
            assert (await http.get("/healthz", headers={"Origin": "https://x"})).status_code == 200


async def _wait_for_count(sessions: KeySessions, label: str, count: int) -> None:
    async with asyncio.timeout(10):
        while sessions.count(label) != count:
            await asyncio.sleep(0.01)


async def test_per_key_session_limit(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, api_keys=KEYS, max_sessions_per_key=2) as p:
        sessions = _key_sessions(p)
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(connect(p, key=KEY))
            second = await stack.enter_async_context(connect(p, key=KEY, form="query"))
            for c in (first, second):
                await c.send("session.config", response_format="pcm")
                await c.expect("session.ready")
            assert sessions.count("alpha") == 2
            async with connect(p, key=KEY, form="subprotocol") as third:
                await _refused(third, "too_many_sessions", 1013)
            # Another key has its own count (and `beta` its own limit of one).
            async with connect(p, key=OTHER_KEY) as beta:
                await _speaks(beta)
                async with connect(p, key=OTHER_KEY) as beta2:
                    await _refused(beta2, "too_many_sessions", 1013)
            await first.ws.close()
            await _wait_for_count(sessions, "alpha", 1)
            async with connect(p, key=KEY) as again:
                await _speaks(again)
            await _speaks_on(second)
        await _wait_for_count(sessions, "alpha", 0)


def _client_sessions(p: Pipeline) -> KeySessions:
    return p.server.config.app.state.client_sessions


async def _ready(c: Client) -> None:
    await c.send("session.config", response_format="pcm")
    await c.expect("session.ready")


async def test_per_client_session_limit_without_keys(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, max_sessions_per_client=2) as p:
        sessions = _client_sessions(p)
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(connect(p))
            second = await stack.enter_async_context(connect(p))
            for c in (first, second):
                await _ready(c)
            assert sessions.count("127.0.0.1") == 2
            async with connect(p) as third:
                await _refused(third, "too_many_sessions", 1013)
                assert third.ws.close_reason and "client address" in third.ws.close_reason
            assert sessions.count("127.0.0.1") == 2  # the refused one held no slot
            # Another address has its own count.
            async with connect(p, source="127.0.0.2") as other:
                await _speaks(other)
                assert sessions.count("127.0.0.2") == 1
            await _wait_for_count(sessions, "127.0.0.2", 0)
            # A closed session frees its slot.
            await first.ws.close()
            await _wait_for_count(sessions, "127.0.0.1", 1)
            async with connect(p) as again:
                await _speaks(again)
            await _speaks_on(second)
        await _wait_for_count(sessions, "127.0.0.1", 0)
        assert p.total("taken") == 3  # the refused session queued nothing


async def test_forwarded_for_counts_only_from_a_trusted_proxy(
    redis_url: str, key_prefix: str
) -> None:
    # 127.0.0.3 plays a trusted proxy and 10.0.0.0/8 the proxies in front of it; 127.0.0.2 is
    # an untrusted client (uvicorn itself takes X-Forwarded-For from 127.0.0.1 only).
    async with start_pipeline(
        redis_url, key_prefix, max_sessions_per_client=1, trusted_proxies="127.0.0.3,10.0.0.0/8"
    ) as p:
        sessions = _client_sessions(p)
        async with contextlib.AsyncExitStack() as stack:
            # An untrusted peer's X-Forwarded-For is ignored: a spoofed one wins no new slot.
            spoofer = await stack.enter_async_context(
                connect(p, source="127.0.0.2", forwarded_for="198.51.100.1")
            )
            await _ready(spoofer)
            assert sessions.count("127.0.0.2") == 1 and not sessions.count("198.51.100.1")
            async with connect(p, source="127.0.0.2", forwarded_for="198.51.100.2") as again:
                await _refused(again, "too_many_sessions", 1013)
            # Through the trusted proxy, each forwarded client has its own count.
            proxied = await stack.enter_async_context(
                connect(p, source="127.0.0.3", forwarded_for="198.51.100.7, 10.1.2.3")
            )
            await _ready(proxied)
            assert sessions.count("198.51.100.7") == 1 and not sessions.count("127.0.0.3")
            async with connect(p, source="127.0.0.3", forwarded_for="198.51.100.8") as another:
                await _speaks(another)
            # A hop the client prepended itself does not make it someone else.
            async with connect(
                p, source="127.0.0.3", forwarded_for="203.0.113.5, 198.51.100.7"
            ) as forged:
                await _refused(forged, "too_many_sessions", 1013)
            assert not sessions.count("203.0.113.5")
        await _wait_for_count(sessions, "127.0.0.2", 0)
        await _wait_for_count(sessions, "198.51.100.7", 0)


async def test_with_keys_the_per_key_limit_replaces_the_per_client_one(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, api_keys=KEYS, max_sessions_per_client=1) as p:
        async with connect(p, key=KEY) as first, connect(p, key=KEY) as second:
            for c in (first, second):
                await _ready(c)
            assert _key_sessions(p).count("alpha") == 2
            assert not _client_sessions(p).count("127.0.0.1")


async def _speaks_on(c: Client) -> None:
    await c.send("input.text", text="Still mine.")
    await c.send("input.done")
    sentences, _ = await c.utterance()
    assert [s.start["sentence_text"] for s in sentences] == ["Still mine."]


# The test's own clients log what they send (websockets and httpx at DEBUG); the server's
# loggers are what must never print a key.
CLIENT_LOGGERS = ("websockets.client", "httpx", "httpcore")


@contextlib.contextmanager
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """uvicorn's loggers do not propagate to the root: capture them directly, at DEBUG."""
    names = ("uvicorn.error", "uvicorn.access")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).addHandler(caplog.handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(caplog.handler)
            logging.getLogger(name).setLevel(levels[name])


async def test_keys_never_reach_the_logs(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_pipeline(redis_url, key_prefix, api_keys=KEYS, max_sessions_per_key=1) as p:
        with server_logs(caplog):
            for form in ("bearer", "subprotocol", "query"):
                async with connect(p, key=KEY, form=form) as c:
                    await _speaks(c)
                    async with connect(p, key=KEY, form=form) as over:
                        await _refused(over, "too_many_sessions", 1013)
                await _wait_for_count(_key_sessions(p), "alpha", 0)
                async with connect(p, key=WRONG_KEY, form=form) as c:
                    await _refused(c, "unauthorized", 1008)
            async with httpx.AsyncClient(base_url=p.http) as http:
                for key in (KEY, WRONG_KEY):
                    await http.get("/readyz", headers={"Authorization": f"Bearer {key}"})
                    await http.get("/readyz", params={"api_key": key})
                    await http.get("/healthz", params={"api_key": key})
    server = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in server)
    for secret in (KEY, WRONG_KEY, KEY[3:20], WRONG_KEY[3:20]):
        assert secret not in text
    # The capture saw what would have leaked: refusals, header dumps, request lines.
    assert "refused websocket /v1/audio/speech/stream" in text
    assert "unauthorized (key form: query)" in text
    assert re.search(r"(?i)authorization: \[redacted\]", text), text[-3000:]
    assert "/readyz?api_key=redacted" in text and "/healthz?api_key=redacted" in text
    assert "key alpha" in text  # keys are named by label


# --- the `voxline say` client ---------------------------------------------------------------


def _say_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["say", *argv])


async def test_say_sends_its_key(
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.wav"
    async with start_pipeline(redis_url, key_prefix, api_keys=KEYS) as p:
        assert await say(_say_args("Hello.", "-o", str(out), "--url", p.url)) == 2
        assert "unauthorized" in capsys.readouterr().err
        assert not out.exists()
        status = await say(_say_args("Hello.", "-o", str(out), "--url", p.url, "--api-key", KEY))
        assert status == 0 and len(parse_wav(out.read_bytes()).frames) > 0
        monkeypatch.setenv("VOXLINE_API_KEY", OTHER_KEY)  # the default comes from the env
        out.unlink()
        assert await say(_say_args("Hello.", "-o", str(out), "--url", p.url)) == 0
        assert out.exists()
