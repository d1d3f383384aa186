"""Fuzzing the WebSocket protocol (hypothesis): random and mutated frames never crash the
server, never put an unhandled exception in its log, and always get the reply that
docs/protocol.md prescribes (its "Errors and limits" table is the law here).

How it works:

- One real pipeline (uvicorn + one tone worker) per test, on an event loop of its own in a
  background thread (`LiveServer`). Hypothesis runs plain synchronous examples that submit
  coroutines to that loop, so all examples of a test share one server; each example opens its
  own connection.
- `Model` is the oracle, written from the contract: for every frame it predicts the control
  replies (`error` and its code, `session.ready`, `session.done`, `input.cancelled`) and
  whether and how the connection closes. Sentence splitting is not under test here, so the
  model feeds its own `SentenceSplitter` to know which sentences an utterance holds.
- `Conversation` sends frame by frame in lockstep with the model, matches every control reply
  against the prediction, checks the framing of every sentence's audio as it arrives, and at
  the end proves the session still works wherever the contract keeps it open.
- The same conversations also go out pipelined, without waiting for replies, to race the
  receiver against the relay; there only the timing-independent invariants are checked.
- After every example the server log must hold nothing at ERROR or above, no exception and no
  traceback; at the end of a test /healthz must answer.
- Deterministic in CI: derandomize=True, no example database, bounded example counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import re
import threading
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import real_redis_or_fail
from tests.harness import REDIS_URL, Client, Pipeline, start_pipeline
from voxline.shared.audio.formats import ALL_FORMATS, check_rate, default_rate
from voxline.shared.capabilities import EngineInfo
from voxline.shared.embedded_redis import drop_server as drop_memory_server
from voxline.shared.protocol import (
    EXTENSIONS,
    PCM_RATE,
    ErrorCode,
    ProtocolError,
    parse_client_message,
    parse_config,
)
from voxline.shared.wire import Job
from voxline.speech.splitter import SentenceSplitter
from voxline.worker.engines.tone import DEFAULT_VOICE, VOICES

# Every JSON frame the server sends must be one of the messages docs/protocol.schema.json lists.
SCHEMA_FILE = Path(__file__).parents[2] / "docs" / "protocol.schema.json"
_SERVER_SCHEMA = json.loads(SCHEMA_FILE.read_text())
_SERVER = jsonschema.Draft202012Validator(
    {"$defs": _SERVER_SCHEMA["$defs"], **_SERVER_SCHEMA["properties"]["server"]}
)


def server_message(frame: str) -> dict[str, Any]:
    msg = json.loads(frame)
    errors = sorted(_SERVER.iter_errors(msg), key=str)
    assert not errors, f"{msg} breaks the protocol's schema: {errors[0].message}"
    return msg


# Property-based: thousands of frames against a running front end.
pytestmark = pytest.mark.integration

# Small limits keep oversized frames cheap to make and send.
MAX_MESSAGE_BYTES = 4096
MAX_BUFFER_CHARS = 600
MAX_SENTENCE_CHARS = 300
SERVER_SETTINGS: dict[str, Any] = {
    "max_message_bytes": MAX_MESSAGE_BYTES,
    "max_config_bytes": MAX_MESSAGE_BYTES,
    "max_buffer_chars": MAX_BUFFER_CHARS,
    "max_sentence_chars": MAX_SENTENCE_CHARS,
    # Admission control is not under test: a backlog left by the previous example's cancelled
    # sentences must not turn the next connection away with `overloaded`.
    "max_backlog_per_slot": 1000.0,
}
ENGINE_OPTIONS = {"ms_per_char": "1"}  # 1 ms of audio per character: examples stay fast
TONE_RATE = 24000
REPLY_TIMEOUT = 10.0

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# --- the contract as an oracle ---------------------------------------------------------------

CLIENT_TYPES = (
    "session.config",
    "input.text",
    "input.flush",
    "input.cancel",
    "input.done",
    "session.close",
)
FORMATS = ALL_FORMATS
STREAMABLE = tuple(f for f in ALL_FORMATS if f != "wav")
# vllm-omni's fields beyond the core: those that change whose voice speaks are refused by an
# engine that cannot honour them; hints are accepted with a `warning` each.
VOICE_FIELDS = ("ref_audio", "speaker_embedding")
HINT_FIELDS = (
    "instructions",
    "max_new_tokens",
    "initial_codec_chunk_frames",
    "ref_text",
    "x_vector_only_mode",
    "seed",
    "non_streaming_mode",
)
COMPAT_FIELDS = VOICE_FIELDS + HINT_FIELDS
TONE_VOICES = tuple(VOICES)
SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_verdict(raw: str) -> str | dict[str, Any]:
    """The contract's verdict on a text frame's content: an error code, or the message."""
    try:
        data = json.loads(raw, parse_constant=_no_constants)  # strict JSON: no NaN/Infinity
    except (ValueError, RecursionError):
        return "invalid_json"
    if not isinstance(data, dict):
        return "invalid_message"
    kind = data.get("type")
    if not isinstance(kind, str):
        return "invalid_message"
    if kind not in CLIENT_TYPES:
        return "unknown_type"
    if kind == "input.text":
        text = data.get("text")
        # A JSON escape can spell a lone surrogate: no Unicode text, so no valid `text`.
        if not isinstance(text, str) or SURROGATE.search(text):
            return "invalid_message"
    return data


def frame_verdict(frame: Frame) -> str | dict[str, Any]:
    if frame.binary:
        return "unexpected_binary"
    assert isinstance(frame.data, str)
    if len(frame.data.encode()) > MAX_MESSAGE_BYTES:
        return "text_too_large"
    return parse_verdict(frame.data)


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and (type(value) is int or math.isfinite(value))


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and low <= v < 2**63


# session.config against the tone engine: which non-null values each field takes (null is
# every field's default, as in vllm-omni).
FIELD_OK: dict[str, Callable[[Any], bool]] = {
    "voice": lambda v: isinstance(v, str) and v in TONE_VOICES,
    "speaker": lambda v: isinstance(v, str) and v in TONE_VOICES,
    "response_format": lambda v: isinstance(v, str) and v in FORMATS,
    "stream_audio": lambda v: type(v) is bool,
    "sample_rate": lambda v: type(v) is int and 8000 <= v <= 48000,
    "speed": lambda v: _is_number(v) and 0.25 <= v <= 4.0,
    "language": lambda v: v == "Auto",  # tone lists no language
    "split_granularity": lambda v: isinstance(v, str) and v in ("none", "sentence", "clause"),
    "word_timestamps": lambda v: type(v) is bool,  # tone times words
    "model": lambda v: v == "tone",
    "task_type": lambda v: v == "CustomVoice",
    # Tone honours none of the voice-changing fields: set, they are refused.
    **{name: (lambda v: False) for name in VOICE_FIELDS},
    # Hints it cannot honour are accepted (and warned about) when well-formed.
    "instructions": lambda v: isinstance(v, str),
    "ref_text": lambda v: isinstance(v, str),
    "max_new_tokens": _int_at_least(1),
    "initial_codec_chunk_frames": _int_at_least(0),
    "seed": _int_at_least(0),
    "x_vector_only_mode": lambda v: type(v) is bool,
    "non_streaming_mode": lambda v: type(v) is bool,
}


def _set(data: dict[str, Any]) -> dict[str, Any]:
    """The config's fields that are not null (null means the default)."""
    return {k: v for k, v in data.items() if k != "type" and v is not None}


def shown_name(name: str) -> str:
    """How an error can name a field whose name is no Unicode text (lone surrogates)."""
    return name.encode("utf-8", "backslashreplace").decode()


def config_problems(data: dict[str, Any]) -> set[str]:
    """The fields an `invalid_config` may name (empty: the config is valid for tone)."""
    body = _set(data)
    bad = set()
    for name, value in body.items():
        ok = FIELD_OK.get(name)
        if ok is None or not ok(value) or (isinstance(value, str) and SURROGATE.search(value)):
            bad.add(shown_name(name))
    if "speaker" in body and "voice" in body and body["speaker"] != body["voice"]:
        bad.add("speaker")
    if "speaker" in bad:
        bad.add("voice")  # an unknown speaker is refused as the voice it stands for
    fmt = body.get("response_format", "wav")
    if body.get("stream_audio") is True and fmt not in STREAMABLE:
        bad.add("stream_audio")
    rate = body.get("sample_rate")
    valid_rate = rate is not None and FIELD_OK["sample_rate"](rate)
    if valid_rate and fmt in FORMATS and check_rate(fmt, rate):
        bad.add("sample_rate")  # a rate this format cannot carry (opus at 44100)
    return bad


@dataclass(frozen=True)
class Frame:
    data: str | bytes
    binary: bool = False

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 300 else self.data[:150] + self.data[-50:]
        more = "" if len(self.data) <= 300 else f", len={len(self.data)}"
        return f"Frame({shown!r}{', binary=True' if self.binary else ''}{more})"


@dataclass(eq=False)
class Utt:
    """An utterance as the model sees it."""

    index: int
    fmt: str
    sample_rate: int
    stream_audio: bool
    splitter: SentenceSplitter
    sentences: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.sentences and self.splitter.pending_chars == 0


@dataclass(frozen=True)
class Expect:
    kind: str  # error, ready, warning, done, cancelled, close
    code: str | int | None = None  # the error code or the close code
    fields: frozenset[str] = frozenset()  # invalid_config: the fields it may name
    utt: Utt | None = None
    ready: dict[str, Any] | None = None


def text_frame(text: str) -> Frame:
    """A raw text frame. Only Unicode travels in one, so a lone surrogate (hypothesis can draw
    one: it mixes string constants of the code under test into its text) becomes U+FFFD."""
    return Frame(SURROGATE.sub("\ufffd", text))


def _refused(code: str, close: int | None = None) -> list[Expect]:
    return [Expect("error", code)] + ([Expect("close", close)] if close else [])


class Model:
    """The connection's state as docs/protocol.md describes it."""

    def __init__(self) -> None:
        self.configured = False
        self.fmt, self.rate, self.stream, self.granularity = "wav", TONE_RATE, False, "sentence"
        self.next_index = 0
        self.open: Utt | None = None  # the utterance still taking text
        self.utterances: dict[int, Utt] = {}
        self.last_done: Utt | None = None

    def step(self, frame: Frame) -> list[Expect]:
        verdict = frame_verdict(frame)
        if not self.configured:
            if verdict == "text_too_large":  # too large to be read: said so, then closed
                return _refused("text_too_large", 1008)
            if isinstance(verdict, str) or verdict["type"] != "session.config":
                return _refused("not_configured", 1008)
            return self._configure(verdict)
        if isinstance(verdict, str):
            return _refused(verdict)  # a single bad message: the session goes on
        kind = verdict["type"]
        if kind == "input.text":
            text = verdict["text"]
            if not text:
                return []
            buffered = self.open.splitter.pending_chars if self.open else 0
            if buffered + len(text) > MAX_BUFFER_CHARS:
                return _refused("text_too_large")
            utt = self._open()
            utt.sentences += utt.splitter.feed(text)
            return []
        if kind == "input.flush":
            if self.open is not None:
                self.open.sentences += self.open.splitter.flush()
            return []
        if kind == "input.done":
            return [Expect("done", utt=self._end())]
        if kind == "input.cancel":
            utt = self._open()  # a cancel with nothing in progress still ends one utterance
            self.open = None
            return [Expect("cancelled", utt=utt)]
        if kind == "session.config":
            if self.open is not None and not self.open.is_empty():
                return _refused("invalid_message")  # only between utterances
            self._drop_empty()
            return self._configure(verdict)
        assert kind == "session.close"
        replies = []
        if self.open is not None and self.open.is_empty():
            self._drop_empty()
        elif self.open is not None:
            replies.append(Expect("done", utt=self._end()))
        return replies + [Expect("close", 1000)]

    def _configure(self, data: dict[str, Any]) -> list[Expect]:
        problems = config_problems(data)
        if problems:
            return [Expect("error", "invalid_config", fields=frozenset(problems))] + [
                Expect("close", 1008)
            ]
        self.configured = True
        data = _set(data)
        self.fmt = data.get("response_format", "wav")
        default = PCM_RATE if self.fmt == "pcm" else default_rate(self.fmt, TONE_RATE)
        self.rate = data.get("sample_rate") or default
        self.stream = data.get("stream_audio", False)
        self.granularity = data.get("split_granularity", "sentence")
        ready = {
            "format": self.fmt,
            "sample_rate": self.rate,
            "voice": data.get("voice") or data.get("speaker") or DEFAULT_VOICE,
            "engine": "tone",
        }
        warnings = [Expect("warning", fields=frozenset({n})) for n in HINT_FIELDS if n in data]
        return [Expect("ready", ready=ready), *warnings]

    def _open(self) -> Utt:
        if self.open is None:
            splitter = SentenceSplitter(
                max_sentence_chars=MAX_SENTENCE_CHARS, granularity=self.granularity
            )
            self.open = Utt(self.next_index, self.fmt, self.rate, self.stream, splitter)
            self.utterances[self.next_index] = self.open
            self.next_index += 1
        return self.open

    def _end(self) -> Utt:
        utt = self._open()
        utt.sentences += utt.splitter.flush()
        self.open = None
        self.last_done = utt
        return utt

    def _drop_empty(self) -> None:
        """An utterance that never held anything is forgotten, its index given out again."""
        if self.open is not None:
            self.next_index = self.open.index
            self.open = None


# --- a conversation in lockstep with the model -----------------------------------------------


def message(kind: str, **fields: Any) -> Frame:
    return Frame(json.dumps({"type": kind, **fields}))


class Conversation:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.model = Model()
        self.sent: list[Frame] = []
        self.expected: deque[Expect] = deque()
        self.closed: int | None = None
        # Audio framing.
        self.current: dict[str, Any] | None = None  # the open sentence's audio.start
        self.frames: list[bytes] = []
        self.last_utterance = -1
        self.next_sentence: dict[int, int] = {}
        self.delivered: dict[int, set[int]] = {}  # audio.done, not cancelled
        self.cut: dict[int, set[int]] = {}  # audio.done with cancelled: true
        self.ended: set[int] = set()  # utterances answered by session.done / input.cancelled

    def _where(self) -> str:
        return f"after frames {self.sent!r}"

    async def send(self, frame: Frame) -> None:
        self.sent.append(frame)
        self.expected.extend(self.model.step(frame))
        await self.ws.send(frame.data)
        await self.settle()

    async def settle(self) -> None:
        """Read until every predicted reply has come (a close: until the connection ends)."""
        while self.expected:
            head = self.expected[0]
            try:
                frame = await asyncio.wait_for(self.ws.recv(), REPLY_TIMEOUT)
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                assert head.kind == "close", f"closed {code}, expected {head} {self._where()}"
                assert code == head.code, f"closed {code}, expected {head.code} {self._where()}"
                self.expected.popleft()
                assert not self.expected
                self.closed = code
                return
            except TimeoutError:
                raise AssertionError(f"no reply in {REPLY_TIMEOUT} s: expected {head}") from None
            self.receive(frame)

    def receive(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            assert self.current is not None, f"binary frame outside a sentence {self._where()}"
            self.frames.append(frame)
            return
        msg = server_message(frame)
        kind = msg["type"]
        if kind in ("audio.start", "audio.words", "audio.done") or (
            kind == "error" and "sentence_index" in msg
        ):
            self._audio(msg)
            return
        assert self.expected, f"unexpected {msg} {self._where()}"
        head = self.expected.popleft()
        assert head.kind != "close", f"got {msg}, expected a close {head.code} {self._where()}"
        if head.kind == "error":
            assert kind == "error" and msg["code"] == head.code, (
                f"got {msg}, expected error {head.code} {self._where()}"
            )
            assert isinstance(msg["message"], str) and msg["message"]
            if head.code == "invalid_config":
                assert msg["field"] in head.fields, f"{msg} names none of {set(head.fields)}"
                assert msg["field"] in msg["message"], msg
        elif head.kind == "warning":
            assert kind == "warning" and msg["field"] in head.fields, (
                f"got {msg}, expected a warning on {set(head.fields)} {self._where()}"
            )
            assert msg["code"] == "ignored_field" and msg["field"] in msg["message"], msg
        elif head.kind == "ready":
            assert kind == "session.ready", f"got {msg}, expected session.ready {self._where()}"
            assert head.ready is not None
            assert {k: msg[k] for k in head.ready} == head.ready, msg
            assert isinstance(msg["session_id"], str) and msg["session_id"]
        elif head.kind == "done":
            utt = head.utt
            assert utt is not None
            expected = {
                "type": "session.done",
                "utterance_index": utt.index,
                "total_sentences": len(utt.sentences),
            }
            assert msg == expected, f"got {msg}, expected {expected} {self._where()}"
            assert self.current is None
            delivered = self.delivered.get(utt.index, set())
            assert delivered == set(range(len(utt.sentences))), (utt.sentences, delivered)
            self.ended.add(utt.index)
        else:
            utt = head.utt
            assert utt is not None and head.kind == "cancelled"
            assert kind == "input.cancelled" and msg["utterance_index"] == utt.index, (
                f"got {msg}, expected input.cancelled of utterance {utt.index} {self._where()}"
            )
            assert self.current is None, "a started sentence is closed before input.cancelled"
            undelivered = set(msg["cancelled_sentences"])
            delivered = self.delivered.get(utt.index, set())
            assert not undelivered & delivered, msg
            assert undelivered | delivered == set(range(len(utt.sentences))), (msg, utt)
            assert self.cut.get(utt.index, set()) <= undelivered, msg
            self.ended.add(utt.index)

    def _audio(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        assert kind != "error", f"a sentence failed: {msg} {self._where()}"
        u, s = msg["utterance_index"], msg["sentence_index"]
        assert u not in self.ended, f"{msg} after its utterance ended"
        if kind == "audio.start":
            assert self.current is None, f"{msg} inside {self.current}"
            assert u >= self.last_utterance, f"{msg}: utterances out of order"
            assert s == self.next_sentence.get(u, 0), f"{msg}: sentences out of order"
            utt = self.model.utterances[u]
            assert msg["sentence_text"] == utt.sentences[s], (msg, utt.sentences)
            assert (msg["format"], msg["sample_rate"]) == (utt.fmt, utt.sample_rate), msg
            self.current, self.frames, self.last_utterance = msg, [], u
            return
        assert self.current is not None, f"{msg} outside a sentence"
        assert (u, s) == (self.current["utterance_index"], self.current["sentence_index"]), msg
        if kind == "audio.words":
            return
        assert msg["total_bytes"] == sum(map(len, self.frames)), msg
        assert msg["error"] is False, msg
        if msg["cancelled"]:
            self.cut.setdefault(u, set()).add(s)
        else:
            utt = self.model.utterances[u]
            assert msg["total_bytes"] > 0, msg
            if not utt.stream_audio:
                assert len(self.frames) == 1, "stream_audio=false: one complete file"
            if utt.fmt == "wav":
                assert self.frames[0][:4] == b"RIFF", "a WAV file"
            if utt.fmt == "pcm":
                assert all(len(f) % 2 == 0 for f in self.frames), "whole s16le samples"
            self.delivered.setdefault(u, set()).add(s)
        self.next_sentence[u] = s + 1
        self.current = None

    async def prove_usable(self) -> None:
        """Where the contract keeps the connection open, it still speaks, then closes 1000."""
        if self.closed is not None:
            return
        await self.send(message("input.done"))
        await self.send(message("input.text", text="Still here."))
        await self.send(message("input.done"))
        last = self.model.last_done
        assert last is not None and last.sentences == ["Still here."]
        assert self.delivered[last.index] == {0}
        await self.send(message("session.close"))
        assert self.closed == 1000


async def converse(
    pipeline: Pipeline, frames: list[Frame], *, config: dict[str, Any] | None
) -> Conversation:
    """Send `config` (when given) and then `frames`, each checked against the model."""
    async with websockets.connect(
        pipeline.ws_url, max_size=None, open_timeout=10, subprotocols=[EXTENSIONS]
    ) as ws:
        conversation = Conversation(ws)
        if config is not None:
            await conversation.send(message("session.config", **config))
            assert conversation.model.configured, f"not a valid config: {config}"
        for frame in frames:
            await conversation.send(frame)
            if conversation.closed is not None:
                break
        await conversation.prove_usable()
        return conversation


# --- one server for all examples of a test ----------------------------------------------------


class LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        with self._lock:
            records, self.records = self.records, []
        return records


class LiveServer:
    """A pipeline on an event loop in a background thread; `call` runs a coroutine there."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="fuzz-server", daemon=True
        )
        self.recorder = LogRecorder()
        # uvicorn's loggers do not propagate to the root logger: listen on both.
        self.loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
        self._stop: asyncio.Event | None = None
        self._held: concurrent.futures.Future[None] | None = None
        self.pipeline: Pipeline

    async def _hold(self, started: concurrent.futures.Future[Pipeline]) -> None:
        self._stop = asyncio.Event()
        async with start_pipeline(
            self.redis_url, self.key_prefix, engine_options=ENGINE_OPTIONS, **SERVER_SETTINGS
        ) as pipeline:
            started.set_result(pipeline)
            await self._stop.wait()

    def __enter__(self) -> LiveServer:
        self.thread.start()
        started: concurrent.futures.Future[Pipeline] = concurrent.futures.Future()
        self._held = asyncio.run_coroutine_threadsafe(self._hold(started), self.loop)
        concurrent.futures.wait(
            [started, self._held], timeout=30, return_when=concurrent.futures.FIRST_COMPLETED
        )
        if self._held.done():
            self._held.result()  # startup failed: raise why
        self.pipeline = started.result(timeout=0)
        # After uvicorn configured its logging (it replaces the handlers of its loggers).
        for logger in self.loggers:
            logger.addHandler(self.recorder)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for logger in self.loggers:
            logger.removeHandler(self.recorder)
        try:
            if self._stop is not None:
                self.loop.call_soon_threadsafe(self._stop.set)
            if self._held is not None:
                self._held.result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    def call(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def assert_log_clean(self) -> None:
        bad = [
            r
            for r in self.recorder.take()
            if r.levelno >= logging.ERROR
            or r.exc_info
            or any(
                mark in r.getMessage() for mark in ("Traceback", "Exception in ASGI application")
            )
        ]
        assert not bad, "server logged: " + "; ".join(
            f"{r.name} {r.levelname} {r.getMessage()!r} exc_info={bool(r.exc_info)}" for r in bad
        )

    def assert_healthy(self) -> None:
        with urllib.request.urlopen(self.pipeline.http + "/healthz", timeout=10) as reply:
            assert reply.status == 200
            assert json.loads(reply.read()) == {"status": "ok"}
        self.assert_log_clean()


@pytest.fixture
def memory_server() -> Iterator[LiveServer]:
    name = uuid.uuid4().hex
    try:
        with LiveServer(f"memory://{name}", f"vxfuzz-{name[:10]}") as server:
            yield server
    finally:
        drop_memory_server(name)


@pytest.fixture
def redis_server() -> Iterator[LiveServer]:
    real_redis_or_fail()
    prefix = f"vxfuzz-{uuid.uuid4().hex[:10]}"
    try:
        with LiveServer(REDIS_URL, prefix) as server:
            yield server
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


# --- strategies ------------------------------------------------------------------------------

SENTENCES = [
    "Hello there. ",
    "How are you? ",
    "Fine",
    " thanks",
    "!",
    " Dr. Smith went home. ",
    "**Bold** and _soft_ text. ",
    "# A heading\n",
    "- an item\n",
    "3.14 is pi. ",
    "Wait... what? ",
    "日本語です。",
    "a, b, c; d: e. ",
    " ",
    "\n\n",
]
UNICODE_EDGES = [
    "\x00",
    "\ufeff",
    "\u200b\u200d",
    "e\u0301" * 3,
    "\u202eevil. ",
    "😀👍🏽 ",
    "\U0010ffff",
    "\u2028\u2029",
    "नमस्ते।",
    "\t\r\n",
    "\\",
    '"',
    "\ud800",
    "Hi \ud83d there. ",
    "a\udc00b. ",
]
# Lone surrogates too: no text frame can carry them, a JSON escape can.
any_text = st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=40)
texts = st.one_of(
    st.sampled_from(SENTENCES),
    any_text.map("".join),
    st.sampled_from(UNICODE_EDGES),
    st.text(max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "😀", " ", "."]), st.integers(0, 900)),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),  # NaN and Infinity: see wrong_values
    st.text(max_size=16),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
wrong_values = st.sampled_from(
    [None, True, False, 0, 1, -1, 2**63, -(2**63) - 1, 10**30, 0.5, -0.0, 1e308]
    + [float("nan"), float("inf"), "", "x", "NaN", [], ["a"], {}, {"text": "a"}]
)
valid_config_fields: dict[str, st.SearchStrategy[Any]] = {
    "voice": st.sampled_from([*TONE_VOICES, None]),
    "response_format": st.sampled_from(FORMATS),
    "stream_audio": st.booleans(),
    "sample_rate": st.one_of(st.none(), st.integers(8000, 48000)),
    "speed": st.one_of(st.floats(0.25, 4.0), st.integers(1, 4)),
    "language": st.just("Auto"),
    "split_granularity": st.sampled_from(["none", "sentence", "clause"]),
    "word_timestamps": st.booleans(),
    "model": st.sampled_from(["tone", None]),
    "task_type": st.sampled_from(["CustomVoice", None]),
    "speaker": st.sampled_from([*TONE_VOICES, None]),
    **{name: st.none() for name in VOICE_FIELDS},
    "instructions": st.one_of(st.none(), st.just("calm")),
    "max_new_tokens": st.one_of(st.none(), st.integers(1, 4096)),
    "initial_codec_chunk_frames": st.one_of(st.none(), st.integers(0, 64)),
    "seed": st.one_of(st.none(), st.integers(0, 2**32)),
    "non_streaming_mode": st.one_of(st.none(), st.booleans()),
}
OUT_OF_RANGE: dict[str, list[Any]] = {
    "speed": [0.2499, 4.0001, 0, -1, 1e9, 5, "1.0", True],
    "sample_rate": [7999, 48001, 0, -8000, 16000.0, 2**63, 10**400, "16000", True],
    "response_format": ["ogg", "vorbis", "MP3", "PCM", "", " wav"],
    "voice": ["nobody", "", "TONE-MID", "tone-mid ", 7, "\ud800"],
    "speaker": ["nobody", 7],
    "stream_audio": ["yes", 1, 0],
    "language": ["en", "auto", ""],
    "split_granularity": ["word", "Sentence", "None"],
    "word_timestamps": [1, "true"],
    "model": ["Qwen/Qwen3-TTS", "", 5],
    "task_type": ["Base", "VoiceDesign", "Dream", 1],
    "instructions": [5, "\ud800"],
    "max_new_tokens": [0, 2**64, "5", True],
    "initial_codec_chunk_frames": [-1, 2**63, 1.5],
    "seed": [-1, 2**64, "1"],
    "non_streaming_mode": [1, "no"],
    "ref_audio": ["data:audio/wav;base64,AAAA"],
    "speaker_embedding": [[0.1, 0.2], [], "x"],
    "ref_text": [5],
    "x_vector_only_mode": ["yes", 1],
}
field_names = st.one_of(
    st.sampled_from(["text", "type", "voice", "speed", "colour", "", " type", "Type", "\ud800"]),
    st.sampled_from(list(valid_config_fields)),
    st.text(max_size=8),
)
type_values = st.one_of(
    st.sampled_from(CLIENT_TYPES),
    st.sampled_from(
        ["input.shout", "INPUT.TEXT", "input.text ", "", "audio.start", "session.ready"]
        + ["error", "session", "\ud800", "input.text\x00"]
    ),
    st.text(max_size=12),
    wrong_values,
)

valid_configs = st.fixed_dictionaries({}, optional=valid_config_fields)
config_messages = valid_configs.map(lambda c: {"type": "session.config", **c})
text_messages = texts.map(lambda t: {"type": "input.text", "text": t})
bare_messages = st.sampled_from(
    [{"type": t} for t in ("input.flush", "input.done", "input.cancel", "session.close")]
)
valid_messages = st.one_of(config_messages, text_messages, bare_messages)


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> str:
    """JSON text of `value`, spelled in one of several ways (NaN and Infinity included)."""
    indent = draw(st.sampled_from([None, None, 0, 2]))
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    if draw(st.booleans()) or SURROGATE.search(text):
        # A lone surrogate cannot travel in a text frame; as a JSON escape it can.
        text = json.dumps(value, ensure_ascii=True, indent=indent)
    return text


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]] = valid_messages) -> Frame:
    """A valid message, then fields dropped, added, retyped, out of range; the JSON text
    itself maybe cut, padded or repeated."""
    msg = dict(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "add", "retype", "type", "range"]))
        keys = list(msg)
        if op == "drop" and keys:
            msg.pop(draw(st.sampled_from(keys)))
        elif op == "add":
            msg[draw(field_names)] = draw(json_values)
        elif op == "retype" and keys:
            msg[draw(st.sampled_from(keys))] = draw(wrong_values)
        elif op == "type":
            msg["type"] = draw(type_values)
        elif op == "range":
            name = draw(st.sampled_from(list(OUT_OF_RANGE)))
            msg[name] = draw(st.sampled_from(OUT_OF_RANGE[name]))
    text = draw(encoded(msg))
    edit = draw(st.sampled_from(["none"] * 8 + ["cut", "insert", "dup_type", "bom", "wrap"]))
    if edit == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif edit == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.characters()) + text[at:]
    elif edit == "dup_type" and text.endswith("}"):
        text = text[:-1] + ', "type": ' + json.dumps(draw(type_values)) + "}"
    elif edit == "bom":
        text = "\ufeff" + text
    elif edit == "wrap":
        text = "[" + text + "]"
    return text_frame(text)


@st.composite
def near_the_limit(draw: st.DrawFn) -> Frame:
    """input.text messages a few bytes under or over max_message_bytes."""
    char = draw(st.sampled_from(["a", "é", "€", "😀", " ", "."]))
    overhead = len(json.dumps({"type": "input.text", "text": ""}))
    target = MAX_MESSAGE_BYTES + draw(st.integers(-4, 4))
    count = max(0, (target - overhead) // len(char.encode()))
    return Frame(json.dumps({"type": "input.text", "text": char * count}, ensure_ascii=False))


@st.composite
def nested(draw: st.DrawFn) -> Frame:
    depth = draw(st.integers(1, 40))
    shape = draw(st.sampled_from(["array", "member", "unbalanced"]))
    if shape == "array":  # valid JSON, not an object
        return Frame("[" * depth + '{"type": "input.flush"}' + "]" * depth)
    if shape == "member":  # a valid input.flush carrying a nested extra field
        return Frame('{"type": "input.flush", "x": ' + "[" * depth + "]" * depth + "}")
    # Far deeper than any parser recurses, and never closed: invalid JSON.
    return Frame("[" * draw(st.integers(1, MAX_MESSAGE_BYTES + 64)))


JSONISH = '{}[]":,0123456789.eE+-truefalsnNI \n\\'
random_frames = st.one_of(
    st.text(max_size=64).map(text_frame),
    st.text(alphabet=JSONISH, max_size=48).map(Frame),
    st.binary(max_size=64).map(lambda b: Frame(b, binary=True)),
    st.builds(
        lambda c, n: text_frame(c * n),
        st.characters(),
        st.integers(MAX_MESSAGE_BYTES // 4, MAX_MESSAGE_BYTES + 8),
    ),
    json_values.flatmap(encoded).map(Frame),
    nested(),
    near_the_limit(),
)
any_frames = st.one_of(
    random_frames,
    mutated(),
    mutated(config_messages),
    valid_messages.flatmap(encoded).map(Frame),
)

# Conversations: mostly valid steps (so utterances really run), some invalid ones.
speech = st.sampled_from(SENTENCES).map(lambda t: message("input.text", text=t))
conversation_steps = st.one_of(
    speech,
    speech,
    speech,
    st.sampled_from([message(k) for k in ("input.flush", "input.done", "input.cancel")]),
    st.sampled_from([message(k) for k in ("input.done", "input.cancel", "session.close")]),
    config_messages.flatmap(encoded).map(Frame),
    mutated(),
    random_frames,
)


# --- the tests -------------------------------------------------------------------------------


def test_the_first_frame_gets_the_contracts_reply(memory_server: LiveServer) -> None:
    """Anything but a valid session.config first: not_configured, invalid_config or (too
    large to read) text_too_large, 1008."""

    @settings(FUZZ, max_examples=300)
    @given(
        frame=st.one_of(
            any_frames, mutated(config_messages), config_messages.flatmap(encoded).map(Frame)
        )
    )
    @example(frame=Frame('{"type": "session.config", "\\ud800": 1}'))
    @example(frame=Frame('{"type": "session.config", "speed": NaN}'))
    @example(frame=Frame('{"type": "session.config", "instructions": "\\ud800"}'))
    @example(frame=Frame(b"\x00binary", binary=True))
    def check(frame: Frame) -> None:
        memory_server.call(converse(memory_server.pipeline, [frame], config=None))
        memory_server.assert_log_clean()

    check()
    memory_server.assert_healthy()


def test_any_frame_after_config_gets_the_contracts_reply(memory_server: LiveServer) -> None:
    """One random or mutated frame on a configured session; then the session still works."""

    @settings(FUZZ, max_examples=400)
    @given(config=valid_configs.filter(lambda c: not config_problems(c)), frame=any_frames)
    @example(config={}, frame=Frame('{"type": "input.text", "text": "Hi \\ud800 there. "}'))
    @example(config={}, frame=Frame('{"type": "input.done", "x": NaN}'))
    @example(config={}, frame=Frame('{"type": "input.text", "text": Infinity}'))
    @example(config={}, frame=Frame('{"type": "session.config", "\\udc00": 1}'))
    def check(config: dict[str, Any], frame: Frame) -> None:
        memory_server.call(converse(memory_server.pipeline, [frame], config=config))
        memory_server.assert_log_clean()

    check()
    memory_server.assert_healthy()


def _conversations(server: LiveServer, examples: int) -> None:
    @settings(FUZZ, max_examples=examples)
    @given(
        config=valid_configs.filter(lambda c: not config_problems(c)),
        frames=st.lists(conversation_steps, min_size=4, max_size=16),
    )
    def check(config: dict[str, Any], frames: list[Frame]) -> None:
        server.call(converse(server.pipeline, frames, config=config))
        server.assert_log_clean()

    check()
    server.assert_healthy()


def test_random_conversations_follow_the_contract(memory_server: LiveServer) -> None:
    """Sequences of valid and invalid messages after a valid session.config."""
    _conversations(memory_server, 200)


def test_random_conversations_on_real_redis(redis_server: LiveServer) -> None:
    _conversations(redis_server, 50)


async def pipelined(
    pipeline: Pipeline, config: dict[str, Any], frames: list[Frame]
) -> tuple[int, list[dict[str, Any]]]:
    """Send everything at once, then session.close; read to the close. Returns the close
    code and the JSON messages, after checking the audio framing on the way."""
    received: list[dict[str, Any]] = []
    async with websockets.connect(
        pipeline.ws_url, max_size=None, open_timeout=10, subprotocols=[EXTENSIONS]
    ) as ws:
        for frame in [message("session.config", **config), *frames, message("session.close")]:
            try:
                await ws.send(frame.data)
            except websockets.ConnectionClosed:
                break  # an invalid session.config closed it
        current: dict[str, Any] | None = None
        size = 0
        while True:
            try:
                data = await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
            except websockets.ConnectionClosed as exc:
                assert current is None, f"closed inside {current}"
                return (exc.rcvd.code if exc.rcvd is not None else 1006), received
            except TimeoutError:
                raise AssertionError(f"no close in {REPLY_TIMEOUT} s: {received[-3:]}") from None
            if isinstance(data, bytes):
                assert current is not None, "binary frame outside a sentence"
                size += len(data)
                continue
            msg = server_message(data)
            received.append(msg)
            if msg["type"] == "audio.start":
                assert current is None, f"{msg} inside {current}"
                current, size = msg, 0
            elif msg["type"] == "audio.done":
                assert current is not None and msg["sentence_index"] == current["sentence_index"]
                assert msg["total_bytes"] == size and msg["error"] is False, msg
                current = None
            elif msg["type"] in ("session.done", "input.cancelled"):
                assert current is None, f"{msg} inside {current}"


def test_pipelined_conversations_never_break_the_server(memory_server: LiveServer) -> None:
    """The same conversations sent without waiting for any reply, so the receiver races the
    relay. Timing decides some replies (a session.config right after input.done may come while
    that utterance is still being delivered), so only what holds for every timing is checked:
    contract error codes only, never `internal` or a failed sentence, sound framing, and the
    close: 1000 after session.close, 1008 only after an invalid_config."""
    allowed = {
        "invalid_json",
        "unknown_type",
        "invalid_message",
        "unexpected_binary",
        "text_too_large",
        "invalid_config",
    }

    @settings(FUZZ, max_examples=150)
    @given(
        config=valid_configs.filter(lambda c: not config_problems(c)),
        frames=st.lists(conversation_steps, min_size=1, max_size=16),
    )
    def check(config: dict[str, Any], frames: list[Frame]) -> None:
        code, received = memory_server.call(pipelined(memory_server.pipeline, config, frames))
        codes = [m["code"] for m in received if m["type"] == "error"]
        assert set(codes) <= allowed, received
        assert code == (1008 if "invalid_config" in codes else 1000), (code, received[-3:])
        memory_server.assert_log_clean()

    check()
    memory_server.assert_healthy()


# Honours every compatibility field: what tone refuses up front must still be safe here.
EVERYTHING = EngineInfo(
    name="omni",
    sample_rate=24000,
    voices=("a", "b"),
    default_voice="a",
    languages=("en",),
    word_timestamps=True,
    task_types=("CustomVoice", "VoiceDesign", "Base"),
    extra_fields=COMPAT_FIELDS,
)
TONE = EngineInfo(
    name="tone",
    sample_rate=TONE_RATE,
    voices=TONE_VOICES,
    default_voice=DEFAULT_VOICE,
    word_timestamps=True,
)
CODES = {str(code) for code in ErrorCode}


def _safe_error(exc: ProtocolError) -> None:
    # What the client gets must be sendable: JSON in a UTF-8 text frame.
    json.dumps(exc.to_message(), ensure_ascii=False).encode()


@settings(FUZZ, max_examples=1000)
@given(
    raw=st.one_of(
        any_frames.filter(lambda f: not f.binary).map(lambda f: f.data),
        any_text.map(lambda chars: json.dumps({"type": "input.text", "text": "".join(chars)})),
        any_text.map(lambda chars: json.dumps({"type": "session.config", "".join(chars): 1})),
    )
)
@example(raw="[" * 100_000)
@example(raw='{"type": "session.config", "max_new_tokens": 18446744073709551616}')
@example(raw='{"type": "session.config", "ref_text": "\\ud800"}')
def test_parsing_agrees_with_the_contract_and_accepts_only_what_can_be_sent(raw: str) -> None:
    """parse_client_message/parse_config raise nothing but ProtocolError, agree with the
    oracle, and whatever they accept can be queued (msgpack) for any engine."""
    verdict = parse_verdict(raw)
    try:
        msg = parse_client_message(raw)
    except ProtocolError as exc:
        assert str(exc.code) in CODES and exc.code == verdict, (exc.code, verdict)
        _safe_error(exc)
        return
    assert isinstance(verdict, dict) and msg.type == verdict["type"]
    text = msg.text if msg.type == "input.text" else "x"
    Job(session_id="s", utterance=0, sentence=0, text=text, voice="a").pack()
    if msg.type != "session.config":
        return
    problems = config_problems(msg.data)
    for engine in (TONE, EVERYTHING):
        try:
            config = parse_config(msg.data, engine)
        except ProtocolError as exc:
            assert exc.code == ErrorCode.INVALID_CONFIG and exc.field is not None
            assert exc.field in exc.message
            if engine is TONE:
                assert exc.field in problems, (exc.field, problems)
            _safe_error(exc)
            continue
        if engine is TONE:
            assert not problems, problems
        Job(
            session_id="s",
            utterance=0,
            sentence=0,
            text="x",
            voice=config.voice or engine.default_voice,
            format=config.response_format,
            sample_rate=config.sample_rate or 0,
            speed=config.speed,
            language=config.language,
            extra=config.extra_fields(engine.extra_fields),
        ).pack()


async def test_deeply_nested_json_is_invalid_json_and_the_session_goes_on() -> None:
    """Deeper than the JSON parser recurses (RecursionError): a client error, not a crash."""
    name = uuid.uuid4().hex
    try:
        async with start_pipeline(
            f"memory://{name}", "vxfuzz-deep", max_message_bytes=256 * 1024
        ) as p:
            async with Client.connect(p, {"response_format": "pcm"}) as c:
                depth = 100_000
                await c.send_raw('{"type": "input.flush", "x": ' + "[" * depth + "]" * depth + "}")
                error = await c.expect("error")
                assert error["code"] == "invalid_json", error
                await c.send("input.text", text="Still here.")
                await c.send("input.done")
                sentences, _ = await c.utterance()
                assert [s.start["sentence_text"] for s in sentences] == ["Still here."]
    finally:
        drop_memory_server(name)


def test_invalid_utf8_in_a_text_frame_closes_1007_without_a_traceback(
    memory_server: LiveServer,
) -> None:
    """RFC 6455: a text frame that is not UTF-8 fails the connection with 1007. The contract
    does not list it; the server must still not log it as an unhandled exception."""

    async def go() -> int:
        async with websockets.connect(
            memory_server.pipeline.ws_url, subprotocols=[EXTENSIONS]
        ) as ws:
            await ws.send(json.dumps({"type": "session.config"}))
            assert json.loads(await ws.recv())["type"] == "session.ready"
            await ws.send(b"\xed\xa0\x80 \xff", text=True)  # a UTF-8-encoded surrogate, 0xff
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), REPLY_TIMEOUT)
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else 1006

    assert memory_server.call(go()) == 1007
    memory_server.assert_healthy()
