"""vllm-omni's streaming WebSocket as an upstream: `{base}/audio/speech/stream`, one connection
per slot, kept open and reused across sentences (the handshake and `session.config` are paid
once per connection, not per sentence).

One sentence is one utterance: `input.text` then `input.done` with `split_granularity: none`,
read to `session.done` (a long sentence may come back as several parts). The voxline.v1
subprotocol is offered: a server that selects it (voxline) is stopped with `input.cancel` and
the connection kept; any other is stopped by closing the connection, which is how vllm-omni
learns a client left. A connection comes back to the pool only after a clean end
(`session.done`, or `input.cancelled` after a cancel); anything else closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from voxline.worker.engines.base import Cancellation, Cancelled, EngineError, unless_cancelled
from voxline.worker.engines.upstream.pcm import PcmAssembler
from voxline.worker.engines.upstream.target import Sentence, Target, error_message, optional_fields

log = logging.getLogger("voxline.worker.upstream")

EXTENSIONS = "voxline.v1"
CANCEL_GRACE_S = 2.0  # for `input.cancelled` to come back before the connection is dropped


class _Link:
    """One pooled connection and the configuration it holds."""

    __slots__ = ("config", "ws")

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.config: dict[str, Any] | None = None

    @property
    def cancellable(self) -> bool:
        return self.ws.subprotocol == EXTENSIONS

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN


class VllmOmniStream:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.url = f"{target.ws_base}/audio/speech/stream"
        self._idle: list[_Link] = []

    async def close(self) -> None:
        links, self._idle = self._idle, []
        await asyncio.gather(*(link.ws.close() for link in links), return_exceptions=True)

    async def _connect(self) -> _Link:
        try:
            async with asyncio.timeout(self.target.timeout):
                ws = await connect(
                    self.url,
                    subprotocols=[EXTENSIONS],  # type: ignore[list-item]
                    additional_headers=self.target.headers(),
                    max_size=None,  # audio frames: the upstream chooses their size
                    open_timeout=None,
                    proxy=None,
                )
        except TimeoutError:
            raise EngineError(f"upstream timed out after {self.target.timeout:g} s") from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise EngineError(f"upstream refused the connection ({status})") from None
        except (OSError, InvalidHandshake) as exc:
            raise EngineError(f"upstream unreachable: {type(exc).__name__}") from None
        return _Link(ws)

    def _take(self) -> _Link | None:
        while self._idle:
            link = self._idle.pop()
            if link.open:  # one the server closed while idle (its idle timeout) is dropped
                return link
        return None

    def _config(self, sentence: Sentence) -> dict[str, Any]:
        config: dict[str, Any] = {
            "type": "session.config",
            "voice": sentence.voice,
            "response_format": "pcm",
            "stream_audio": True,
            "split_granularity": "none",
        }
        if self.target.model:
            config["model"] = self.target.model
        return config | optional_fields(sentence, self.target)

    async def speak(self, sentence: Sentence, cancel: Cancellation) -> AsyncIterator[np.ndarray]:
        link = self._take()
        if link is not None:
            try:
                await self._send_request(link, sentence)
            except ConnectionClosed:
                link = None  # closed under us between the check and the send: once more, new
        if link is None:
            try:
                link = await unless_cancelled(self._connect(), cancel)
            except Cancelled:
                return
            try:
                await self._send_request(link, sentence)
            except ConnectionClosed as exc:
                raise EngineError(await _refusal(link, exc)) from None
        exchange = _Exchange(link, self.target, cancel)
        try:
            async with contextlib.aclosing(exchange.audio()) as audio:
                async for samples in audio:
                    yield samples
        finally:
            await exchange.settle()
            if exchange.clean and link.open:
                self._idle.append(link)
            else:
                await _drop(link)

    async def _send_request(self, link: _Link, sentence: Sentence) -> None:
        config = self._config(sentence)
        if link.config != config:
            await link.ws.send(json.dumps(config))
            link.config = config
        await link.ws.send(json.dumps({"type": "input.text", "text": sentence.text}))
        await link.ws.send('{"type":"input.done"}')


class _Exchange:
    """One sentence's messages on one connection."""

    def __init__(self, link: _Link, target: Target, cancel: Cancellation) -> None:
        self.link, self.target, self.cancel = link, target, cancel
        self.finished = False  # session.done read
        self.cancel_sent = False
        self.cancel_answered = False  # input.cancelled read
        self.error: str | None = None
        self._watcher = asyncio.create_task(self._stop_on_cancel())

    @property
    def clean(self) -> bool:
        """Nothing of this sentence is left on the wire: the connection can serve another.
        After input.cancel an `input.cancelled` always comes (also when nothing was left to
        cancel), so that must have been read too."""
        return self.cancel_answered if self.cancel_sent else self.finished

    async def _send_cancel(self) -> None:
        self.cancel_sent = True
        with contextlib.suppress(ConnectionClosed):
            await self.link.ws.send('{"type":"input.cancel"}')

    async def _stop_on_cancel(self) -> None:
        await self.cancel.wait()
        if self.link.cancellable:
            await self._send_cancel()
        else:
            await _drop(self.link)

    async def _next(self, timeout: float) -> str | bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self.link.ws.recv()
        except TimeoutError:
            raise EngineError(f"upstream went silent for {timeout:g} s") from None

    async def audio(self) -> AsyncGenerator[np.ndarray, None]:
        pcm = PcmAssembler()
        try:
            while not (self.clean or (self.finished and self.cancel.is_set())):
                message = await self._next(self.target.timeout)
                if isinstance(message, bytes):
                    if not self.cancel.is_set():  # else stale: on the wire before the cancel
                        samples = pcm.feed(message)
                        if len(samples):
                            yield samples
                    continue
                self._handle(json.loads(message))
        except ConnectionClosed as exc:
            if self.cancel.is_set():
                return
            # An error message before the close says why (a refused key, a bad config).
            reason = self.error or (exc.rcvd.reason if exc.rcvd else "")
            code = exc.rcvd.code if exc.rcvd else 1006
            raise EngineError(
                f"upstream closed the connection ({code}){': ' + reason if reason else ''}"
            ) from None
        if self.cancel.is_set():
            return
        if self.error is not None:
            raise EngineError(f"upstream: {self.error}")
        if pcm.partial:
            raise EngineError("upstream audio ended mid-sample")
        if not pcm.received:
            raise EngineError("upstream sent no audio")

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "audio.start":
            rate = event.get("sample_rate")
            if rate is not None and rate != self.target.sample_rate:
                self.error = f"sent audio at {rate} Hz, expected {self.target.sample_rate}"
        elif kind == "audio.done":
            if event.get("error") and self.error is None:
                self.error = "generation failed"
        elif kind == "error":
            self.error = error_message(event) or str(event.get("code", "error"))
        elif kind == "warning":
            log.warning("upstream: %s", error_message(event))
        elif kind == "session.done":
            self.finished = True
        elif kind == "input.cancelled":
            self.cancel_answered = True
        # session.ready, audio.words and types added later: nothing to do

    async def settle(self) -> None:
        """After the audio: stop the watcher; after a cancel, read on to `input.cancelled`
        so the connection can serve the next sentence."""
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        if self.clean or not self.link.open or not self.link.cancellable:
            return
        if not self.cancel.is_set() and not self.finished:
            return  # given up mid-sentence (an error, a timeout): the connection is closed
        if not self.cancel_sent:
            await self._send_cancel()
        try:
            while not self.cancel_answered:
                message = await self._next(CANCEL_GRACE_S)
                if isinstance(message, str):
                    self._handle(json.loads(message))
        except (EngineError, ConnectionClosed, ValueError):
            pass


async def _refusal(link: _Link, closed: ConnectionClosed) -> str:
    """Why a new connection was closed at once: the `error` message the server sent before
    its close frame (a refused key), else the close frame's code and reason."""
    reason = closed.rcvd.reason if closed.rcvd else ""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.5):
            while True:
                message = await link.ws.recv()
                if isinstance(message, str):
                    event = json.loads(message)
                    if event.get("type") == "error":
                        reason = error_message(event) or reason
                        break
    code = closed.rcvd.code if closed.rcvd else 1006
    return f"upstream closed the connection ({code}){': ' + reason if reason else ''}"


async def _drop(link: _Link) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await link.ws.close()
    link.ws.transport.abort()
