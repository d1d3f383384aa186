"""Async Python client of the voxline WebSocket protocol (docs/protocol.md).

Connect once, stream text pieces, iterate the audio of each utterance, cancel (barge-in), and
reuse the connection for the next utterance::

    async with connect("ws://127.0.0.1:8000", voice="en") as tts:
        await tts.send("Hello wor")
        await tts.send("ld. How are you?")
        await tts.done()
        async for event in tts.events():
            if isinstance(event, Audio):
                play(event.data)

        async for event in tts.speak("The next utterance, same connection."):
            ...

One reader task owns the socket and routes every server message to the utterance it belongs
to. The server delivers utterances strictly one after another, so messages go to the oldest
utterance still in flight; `utterance_index` is recorded and checked against that. After
`cancel()` nothing of the cancelled utterances reaches the caller but their `Cancelled`
event, even audio that was already on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable
from types import TracebackType
from typing import Any

import websockets
from websockets.typing import Subprotocol

from voxline.events import (
    TERMINAL,
    Audio,
    AudioDone,
    AudioStart,
    Cancelled,
    Event,
    SentenceError,
    ServerError,
    UtteranceDone,
    VoxlineError,
    Word,
    Words,
    event_of,
)
from voxline.shared import messages
from voxline.shared.audio.formats import HEADERLESS
from voxline.shared.protocol import EXTENSIONS, PATH

__all__ = [
    "Audio",
    "AudioDone",
    "AudioStart",
    "Cancelled",
    "Client",
    "Event",
    "SentenceError",
    "ServerError",
    "Utterance",
    "UtteranceDone",
    "VoxlineError",
    "Word",
    "Words",
    "connect",
    "endpoint",
]

log = logging.getLogger("voxline.client")


# --- utterances ---------------------------------------------------------------------------


class Utterance:
    """One utterance of the connection: its events, through `UtteranceDone` or `Cancelled`."""

    def __init__(self, unclaimed: deque[Utterance]) -> None:
        self.index: int | None = None  # the server's utterance_index, once a message named it
        self.cancelled = False  # cancel() was called while it was in flight
        self.finished = False  # its terminal event arrived
        self._queue: asyncio.Queue[Event | VoxlineError] = asyncio.Queue()
        self._claimed = False  # someone iterates (or will iterate) its events
        self._unclaimed = unclaimed  # the client's queue for events(), which it leaves
        self._discarded = False  # cancelled before anyone claimed it: its events are dropped
        self._newest_at_cancel = False  # the newest utterance a cancel() covered

    def events(self) -> AsyncIterator[Event]:
        """Its events in order, ending with its terminal event; raises `VoxlineError` if the
        connection fails first. One consumer per utterance."""
        if self._claimed:
            raise RuntimeError("this utterance's events are already being consumed")
        self._claimed = True
        with contextlib.suppress(ValueError):
            self._unclaimed.remove(self)
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if isinstance(item, VoxlineError):
                raise item
            yield item
            if isinstance(item, TERMINAL):
                return

    def _deliver(self, item: Event | VoxlineError) -> None:
        if not self._discarded:
            self._queue.put_nowait(item)

    def _drop_pending(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


class _ExtraCancel:
    """A cancel that raced the end of every utterance it covered: the server then cancels an
    empty utterance of its own, whose `input.cancelled` is skipped here."""


# --- the client ---------------------------------------------------------------------------


class Client:
    """A configured voxline connection (see `connect`)."""

    def __init__(self, ws: websockets.ClientConnection, ready: dict[str, Any]) -> None:
        self.ready = ready  # the session.ready message
        # The server's `warning` messages (a config hint the engine ignores), as they came.
        self.warnings: list[dict[str, Any]] = []
        self.session_id: str = ready.get("session_id", "")
        self.sample_rate: int = int(ready.get("sample_rate", 0))
        self.format: str = ready.get("format", "")
        self._ws = ws
        self._lock = asyncio.Lock()  # sends and the bookkeeping they imply stay in one order
        self._inflight: deque[Utterance | _ExtraCancel] = deque()  # oldest first
        self._open: Utterance | None = None  # the utterance taking text
        self._unclaimed: deque[Utterance] = deque()  # for events()
        self._opened = asyncio.Event()  # replaced after each set: wakes events() waiters
        self._sentence: int | None = None  # the sentence between audio.start and audio.done
        self._last_error: dict[str, Any] | None = None  # an error right before a close
        self._failure: VoxlineError | None = None
        self._closing = False
        self._reader = asyncio.create_task(self._read_loop(), name="voxline-client-reader")

    # --- sending ---------------------------------------------------------------------------

    async def send(self, text: str) -> Utterance | None:
        """Append text to the open utterance (opening one if none is); any piece size.
        Returns that utterance (None for empty text with none open: it opens nothing)."""
        async with self._lock:
            self._check()
            if not text:
                return self._open
            utt = self._ensure_open()
            await self._send({"type": "input.text", "text": text})
            return utt

    async def flush(self) -> None:
        """Have the server queue the buffered partial sentence now; the utterance goes on."""
        async with self._lock:
            self._check()
            if self._open is not None:
                await self._send({"type": "input.flush"})

    async def done(self) -> Utterance:
        """End the open utterance (an empty one if none is open): its remaining text is
        spoken, then `UtteranceDone`. More text starts the next utterance."""
        async with self._lock:
            self._check()
            utt = self._ensure_open()
            self._open = None
            await self._send({"type": "input.done"})
            return utt

    async def cancel(self) -> None:
        """Barge-in: cancel every utterance in flight. Each one that is being consumed ends
        with `Cancelled` (nothing else of it follows); those nobody consumes are dropped."""
        async with self._lock:
            if self._failure is not None:
                return  # nothing is in flight on a dead connection
            victims = [u for u in self._inflight if isinstance(u, Utterance) and not u.cancelled]
            if not victims:
                return  # the server has nothing of ours either: no message, no empty utterance
            for utt in victims:
                utt.cancelled = True
                utt._drop_pending()
                if not utt._claimed:
                    utt._discarded = True
                    with contextlib.suppress(ValueError):
                        self._unclaimed.remove(utt)
            victims[-1]._newest_at_cancel = True
            self._open = None
            await self._send({"type": "input.cancel"})

    def events(self) -> AsyncIterator[Event]:
        """The events of the oldest utterance not consumed yet (waiting for the next one to
        open if there is none), through its `UtteranceDone` or `Cancelled`."""
        return self._next_events()

    async def speak(self, text: str | Iterable[str] | AsyncIterable[str]) -> AsyncIterator[Event]:
        """Speak one utterance: send `text` (a string or pieces, sent as they come), end it,
        and yield its events. Closing it early cancels the utterance (and, as `cancel()`
        does, whatever else is in flight): leave the loop inside `contextlib.aclosing()`, so
        that this happens at once, not whenever the generator is finalized."""
        if self._open is not None:
            raise RuntimeError("an utterance is open: end it with done() before speak()")
        pieces = _as_async(text)
        utt: Utterance | None = None
        async for piece in pieces:
            if piece and (utt := await self.send(piece)) is not None:
                break
        feeder: asyncio.Task[None] | None = None
        if utt is None:
            utt = await self.done()
        else:
            feeder = asyncio.create_task(self._feed(utt, pieces))
        try:
            async for event in utt.events():
                yield event
            if feeder is not None:
                await feeder  # the caller's pieces may have failed
        finally:
            if feeder is not None and not feeder.done():
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
            if not utt.finished and not utt.cancelled:
                await self.cancel()

    async def _feed(self, utt: Utterance, pieces: AsyncIterator[str]) -> None:
        try:
            async for piece in pieces:
                if not await self._send_into(utt, {"type": "input.text", "text": piece}):
                    return  # cancelled meanwhile
            await self._send_into(utt, {"type": "input.done"})
        except Exception:
            await self.cancel()  # else its events would wait forever for the rest
            raise

    async def _send_into(self, utt: Utterance, message: dict[str, Any]) -> bool:
        async with self._lock:
            self._check()
            if self._open is not utt:
                return False
            if message["type"] == "input.done":
                self._open = None
            if message.get("text") != "":
                await self._send(message)
            return True

    def _ensure_open(self) -> Utterance:
        # Called under the lock, right before the message that opens it on the server.
        if self._open is None:
            self._open = Utterance(self._unclaimed)
            self._inflight.append(self._open)
            self._unclaimed.append(self._open)
            self._opened.set()
            self._opened = asyncio.Event()
        return self._open

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self._ws.send(json.dumps(message))
        except websockets.ConnectionClosed:
            await asyncio.shield(self._reader)  # it turns the close into the failure
            self._check()
            raise

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _next_events(self) -> AsyncIterator[Event]:
        while not self._unclaimed:
            self._check()
            await self._opened.wait()  # also set when the connection fails
        async for event in self._unclaimed[0].events():
            yield event

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._failure is not None

    async def aclose(self) -> None:
        """Close the connection; the server cancels whatever is still in flight."""
        self._closing = True
        await self._ws.close()
        with contextlib.suppress(Exception):
            await self._reader

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- receiving ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        failure: VoxlineError
        try:
            async for frame in self._ws:
                if isinstance(frame, bytes):
                    self._on_audio(frame)
                else:
                    self._on_message(json.loads(frame))
            failure = self._close_failure()
        except websockets.ConnectionClosed:
            failure = self._close_failure()
        except Exception as exc:  # a bug here must not leave consumers waiting forever
            log.exception("voxline client: the reader failed")
            failure = VoxlineError("client_error", f"the client's reader failed: {exc!r}")
            await self._ws.close()
        self._failure = failure
        for utt in self._inflight:
            if isinstance(utt, Utterance):
                utt._deliver(failure)
        self._inflight.clear()
        self._opened.set()

    def _close_failure(self) -> VoxlineError:
        code, reason = self._ws.close_code, self._ws.close_reason
        if self._closing:
            return VoxlineError("closed", "the client closed the connection", close_code=code)
        if self._last_error is not None:
            return VoxlineError.from_message(self._last_error, close_code=code)
        shown = f"{code} {reason}".strip() if code is not None else "no close frame"
        return VoxlineError(
            "connection_closed", f"the server closed the connection: {shown}", close_code=code
        )

    def _head(self) -> Utterance | _ExtraCancel | None:
        return self._inflight[0] if self._inflight else None

    def _on_audio(self, data: bytes) -> None:
        head = self._head()
        if isinstance(head, Utterance) and not head.cancelled and self._sentence is not None:
            head._deliver(Audio(data, head.index or 0, self._sentence))

    def _on_message(self, raw: dict[str, Any]) -> None:
        try:
            message = messages.read(raw)
        except ValueError:  # pydantic's ValidationError: a type (or shape) this SDK predates
            log.debug("voxline client: ignored %.200r", raw)
            return
        self._last_error = raw if isinstance(message, messages.ErrorMessage) else None
        if isinstance(message, messages.ErrorMessage) and message.sentence_index is None:
            self._on_error(message)
            return
        if isinstance(message, messages.WarningMessage):
            self.warnings.append(raw)
            log.warning("voxline server: %s", message.message)
            return
        if isinstance(message, messages.SessionReady):
            log.debug("voxline client: ignored %s", message.type)
            return
        head = self._head()
        if isinstance(head, _ExtraCancel):
            if isinstance(message, messages.InputCancelled):
                self._inflight.popleft()
            else:
                log.warning("voxline client: %s while a cancel's reply was due", message.type)
            return
        if head is None:
            log.warning("voxline client: %s for no utterance in flight", message.type)
            return
        index = getattr(message, "utterance_index", None)
        if isinstance(index, int):
            if head.index is None:
                head.index = index
            elif head.index != index:
                log.warning("voxline client: utterance %s sent for %s", index, head.index)
        number = head.index if head.index is not None else -1
        if isinstance(message, messages.SessionDone | messages.InputCancelled):
            self._finish(head, message, number)
            return
        if isinstance(message, messages.AudioStart):
            self._sentence = message.sentence_index
        elif isinstance(message, messages.AudioDone):
            self._sentence = None
        if not head.cancelled:
            head._deliver(event_of(message, number))

    def _finish(
        self,
        utt: Utterance,
        message: messages.SessionDone | messages.InputCancelled,
        number: int,
    ) -> None:
        self._inflight.popleft()
        self._sentence = None
        utt.finished = True
        if self._open is utt:
            self._open = None  # the server ended it on its own
        done = isinstance(message, messages.SessionDone)
        if utt._newest_at_cancel and done:
            # It finished before the server read the cancel, which then found nothing in
            # progress and cancelled a new, empty utterance: its reply comes next.
            self._inflight.appendleft(_ExtraCancel())
        if isinstance(message, messages.SessionDone) and not utt.cancelled:
            utt._deliver(UtteranceDone(number, message.total_sentences))
        else:
            cancelled = (
                message.cancelled_sentences if isinstance(message, messages.InputCancelled) else []
            )
            utt._deliver(Cancelled(number, tuple(cancelled)))

    def _on_error(self, message: messages.ErrorMessage) -> None:
        target = self._open
        if message.code == "utterance_too_long":
            # The server ended the open utterance; more text starts the next one.
            self._open = None
        if target is None:
            head = self._head()
            target = head if isinstance(head, Utterance) else None
        error = ServerError(
            target.index if target is not None else None,
            message.code,
            message.message,
            message.field,
        )
        if target is not None and not target.cancelled:
            target._deliver(error)
        else:
            log.warning("voxline client: server error %s: %s", error.code, error.message)


async def _as_async(text: str | Iterable[str] | AsyncIterable[str]) -> AsyncIterator[str]:
    if isinstance(text, str):
        yield text
    elif isinstance(text, AsyncIterable):
        async for piece in text:
            yield piece
    else:
        for piece in text:
            yield piece


# --- connecting ---------------------------------------------------------------------------


class connect:  # noqa: N801 (used like a function, as websockets.connect is)
    """Open a configured connection: `async with connect(url, ...) as tts:` (closed on exit)
    or `tts = await connect(url, ...)` (close it with `await tts.aclose()`).

    `url` is the server (`ws://host:8000`) or the full endpoint URL. Sends `session.config`
    with the given fields (None: left to the server) and waits for `session.ready`; a refused
    config or key raises `VoxlineError`. `stream_audio` defaults to True for the streamable
    formats (pcm, mulaw, alaw). `api_key` is sent as `Authorization: Bearer`.
    """

    def __init__(
        self,
        url: str,
        *,
        voice: str | None = None,
        response_format: str = "pcm",
        stream_audio: bool | None = None,
        sample_rate: int | None = None,
        word_timestamps: bool = False,
        api_key: str | None = None,
        open_timeout: float = 10.0,
        **config: Any,
    ) -> None:
        self.url = endpoint(url)
        if stream_audio is None:
            stream_audio = response_format in HEADERLESS
        fields = {
            "voice": voice,
            "response_format": response_format,
            "stream_audio": stream_audio,
            "sample_rate": sample_rate,
            "word_timestamps": word_timestamps or None,  # an extension: sent only when asked
            **config,
        }
        self.config = {"type": "session.config"} | {
            k: v for k, v in fields.items() if v is not None
        }
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.open_timeout = open_timeout
        self._client: Client | None = None

    async def _open(self) -> Client:
        async with asyncio.timeout(self.open_timeout):
            ws = await websockets.connect(
                self.url,
                max_size=None,
                additional_headers=self.headers,
                subprotocols=[Subprotocol(EXTENSIONS)],
            )
            try:
                with contextlib.suppress(websockets.ConnectionClosed):
                    # A server refusing the connection (a bad key) may have closed it already;
                    # its error message is still read below.
                    await ws.send(json.dumps(self.config))
                ready = await first_message(ws)
            except BaseException:
                await ws.close()
                raise
        return Client(ws, ready)

    def __await__(self) -> Generator[Any, None, Client]:
        return self._open().__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._open()
        return self._client

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.aclose()


async def first_message(ws: websockets.ClientConnection) -> dict[str, Any]:
    """The server's answer to `session.config`: its `session.ready`, else `VoxlineError`."""
    try:
        frame = await ws.recv()
    except websockets.ConnectionClosed as exc:
        close = exc.rcvd
        shown = f"{close.code} {close.reason}".strip() if close is not None else "no close frame"
        raise VoxlineError(
            "connection_closed",
            f"the server closed the connection: {shown}",
            close_code=close.code if close is not None else None,
        ) from None
    message = json.loads(frame) if isinstance(frame, str) else {}
    if message.get("type") == "error":
        raise VoxlineError.from_message(message)
    if message.get("type") != "session.ready":
        raise VoxlineError("protocol_error", f"expected session.ready, got {message!r:.200}")
    return message


def endpoint(url: str) -> str:
    """The endpoint URL of a server URL (`ws://host:8000` -> `.../v1/audio/speech/stream`)."""
    url = url.rstrip("/")
    return url if url.endswith(PATH) else url + PATH
