"""Pipecat adapter: a `WebsocketTTSService` that speaks through a voxline server.

    pip install 'voxline[pipecat]'

    from voxline.pipecat import VoxlineTTSService
    tts = VoxlineTTSService(url="ws://127.0.0.1:8000", api_key=..., voice="en")
    pipeline = Pipeline([..., llm, tts, transport.output(), ...])

A runnable bot is examples/pipecat_bot.py.

One voxline WebSocket per service (so per pipeline), opened at start and reused for every
turn: a turn (pipecat's audio context) is one voxline utterance. Each text chunk pipecat
hands over goes out as `input.text` (with `input.flush` when pipecat aggregates sentences,
since the sentence is then known to be whole), the end of the turn as `input.done`, and an
interruption as `input.cancel`. Audio comes back as PCM at the pipeline's output rate (the
server resamples), `audio.words` become pipecat word timestamps (TTSTextFrames timed with
the audio), and TTFB is stopped on the first audio byte of each utterance.

The connection is pipecat's: the service is a `WebsocketTTSService`, so the socket is opened
with `WebsocketService._websocket_connect` (pipecat's bounded send and close timeouts) and
kept in `self._websocket`, where the base class pings it to verify a reconnection. The
protocol on it is voxline.client's: a `Client` wraps that socket and does the routing that is
easy to get wrong (each message to its utterance, the races of a cancel with the end of an
utterance), so only the handshake (`session.config`, then `session.ready`, offering the
`voxline.v1` subprotocol as `voxline.client.connect` does) is done here. The receive loop
(`_receive_messages`) relays each utterance's events to its audio context and returns or
raises when the connection ends, so that pipecat's receive task reconnects with exponential
backoff (a server restart, an expired session); text that arrives while no connection is up
connects at once rather than wait out the backoff.

Languages: pipecat's `Language` values are lowercased ("en-US" -> "en-us", espeak's form),
and on connecting the service asks for that language, then for its base language ("en") if
the engine refuses the first (the server names the field it refuses); `engine_language` is
the one in use. A plain string the engine lists ("en-gb-x-rp", "English") goes as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

try:
    from pipecat.frames.frames import (
        EndFrame,
        ErrorFrame,
        Frame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import WebsocketTTSService
    from pipecat.transcriptions.language import Language
    from pipecat.utils.errors import ErrorCategory
    from pipecat.utils.tracing.service_decorators import traced_tts
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "voxline.pipecat needs pipecat-ai: install the extra with pip install 'voxline[pipecat]'"
    ) from exc

import websockets

from voxline.client import (
    Audio,
    AudioStart,
    Cancelled,
    Client,
    Event,
    SentenceError,
    ServerError,
    Utterance,
    UtteranceDone,
    VoxlineError,
    Words,
    connect,
    first_message,
)
from voxline.shared.protocol import EXTENSIONS

__all__ = ["VoxlineTTSService", "language_candidates"]

log = logging.getLogger("voxline.pipecat")


def language_candidates(language: str) -> list[str]:
    """The engine languages to try for `language`, best first: as given, lowercased, then
    its base language ("en-US" -> "en-US", "en-us", "en")."""
    lowered = language.lower()
    base = lowered.split("-")[0]
    return list(dict.fromkeys([language, lowered, base]))


_CATEGORIES = {
    "unauthorized": ErrorCategory.AUTHENTICATION,
    "forbidden_origin": ErrorCategory.AUTHORIZATION,
    "invalid_config": ErrorCategory.INVALID_REQUEST,
    "too_many_sessions": ErrorCategory.RATE_LIMIT,
    "overloaded": ErrorCategory.SERVER,
    "internal": ErrorCategory.SERVER,
}


@dataclass
class _Turn:
    """An utterance in flight and the audio context its audio goes to."""

    utterance: Utterance
    context_id: str
    audio_bytes: int = 0  # so far: where the current sentence starts in the turn's audio
    sentence_at: float = 0.0  # seconds from the turn's first sample to the sentence's


class VoxlineTTSService(WebsocketTTSService):
    """Text-to-speech through a voxline server's `/v1/audio/speech/stream` WebSocket."""

    Settings = TTSSettings
    _settings: TTSSettings

    def __init__(
        self,
        *,
        url: str = "ws://127.0.0.1:8000",
        api_key: str | None = None,
        voice: str | None = None,
        language: Language | str | None = None,
        word_timestamps: bool = True,
        sample_rate: int | None = None,
        config: dict[str, Any] | None = None,
        settings: TTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """Args:
        url: the voxline server (`ws://host:port`) or its full endpoint URL.
        api_key: sent as `Authorization: Bearer` (servers with VOXLINE_API_KEYS set).
        voice: a voice of the server's engine (default: the engine's default voice).
        language: a pipecat `Language` (Language.EN_US) or a language the engine lists
            (default: the engine's own choice, "Auto").
        word_timestamps: ask for `audio.words` and push word-timed TTSTextFrames; False for
            an engine that cannot time words (the server refuses the config otherwise).
        sample_rate: output rate (default: the pipeline's audio_out_sample_rate).
        config: more `session.config` fields (`speed`, `split_granularity`...).
        settings: pipecat's runtime settings (`voice`, `language`; they win over the
            arguments); a change of either opens a new connection.
        **kwargs: passed to pipecat's WebsocketTTSService (`text_aggregation_mode`,
            `reconnect_on_error`, `reconnect_backoff_min_wait`, ...).
        """
        store = TTSSettings(model=None, voice=voice, language=language)
        if settings is not None:
            store.apply_update(settings)
        super().__init__(
            sample_rate=sample_rate,
            # With word timestamps, the words are pushed as they are heard instead.
            push_text_frames=not word_timestamps,
            push_start_frame=True,
            settings=store,
            **kwargs,
        )
        self._url = url
        self._api_key = api_key
        self._word_timestamps = word_timestamps
        self._config = dict(config or {})
        self._client: Client | None = None
        self._receive_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()  # one connection attempt at a time
        self._turns: deque[_Turn] = deque()  # in flight, oldest first
        self._relay_queue: asyncio.Queue[_Turn] = asyncio.Queue()  # the relay's next turns
        self._open: _Turn | None = None  # the turn whose utterance takes text
        self.session: dict[str, Any] | None = None  # session.ready of the current connection
        self.engine_language: str | None = None  # the language the engine accepted
        self._ending = False  # stop() ran: no new connection for text that comes after

    def can_generate_metrics(self) -> bool:
        return True

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        # A refused key or config is refused again on every reconnection: pipecat then stops
        # retrying (permanent); an unreachable server is worth retrying.
        if isinstance(exception, VoxlineError):
            return _CATEGORIES.get(exception.code)
        if isinstance(exception, (OSError, TimeoutError, websockets.InvalidHandshake)):
            return ErrorCategory.CONNECTIVITY
        return None

    def language_to_service_language(self, language: Language) -> str | None:
        # Lowercased, as espeak and most engines list them; the base language is tried on
        # connecting if the engine lacks this one.
        return str(language.value).lower()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self._connect()

    async def stop(self, frame: EndFrame) -> None:
        # The pipeline ends: the open turn's last words play before the contexts drain (the
        # base class then waits for them and disconnects).
        await self.flush_audio()
        self._ending = True
        await super().stop(frame)

    # The signature of pipecat's own TTSService, which narrows AIService's ServiceSettings.
    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:  # type: ignore[override]
        changed = await super()._update_settings(delta)
        if "language" in changed:
            self.engine_language = None
        if changed.keys() & {"voice", "language"} and self._client is not None:
            # A voice is fixed per connection's config: the next turn uses a new one.
            await self._disconnect()
            await self._connect()
        return changed

    async def _connect(self) -> None:
        await super()._connect()
        try:
            await self._connect_websocket()
        except (VoxlineError, OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            await self.push_error(
                error_msg=f"voxline: cannot connect to {self._url}: {exc}", exception=exc
            )
            await self._call_event_handler("on_connection_error", str(exc))
            return
        if self._receive_task is None or self._receive_task.done():
            self._receive_task = self.create_task(
                self._receive_task_handler(self._report_error), name="voxline-receive"
            )

    async def _disconnect(self) -> None:
        await super()._disconnect()  # no reconnecting from here on; the contexts end
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    def _is_connected(self) -> bool:
        return self._client is not None and not self._client.closed

    async def _connect_websocket(self) -> None:
        """Open a configured connection, unless one is open; raises if the server cannot be
        reached or refuses the config."""
        async with self._connecting:
            if not self._is_connected():
                await self._open_connection()

    async def _reconnect_websocket(self, attempt_number: int) -> bool:
        async with self._connecting:
            if self._is_connected():
                return True  # text arriving meanwhile connected already
            log.warning("voxline: reconnecting to %s (attempt %d)", self._url, attempt_number)
            await self._close_connection_contexts()
            await self._open_connection()
        return await self._verify_connection()

    async def _open_connection(self) -> None:
        await self._close_client()
        *others, last = [self.engine_language] if self.engine_language else self._languages()
        for language in others:
            try:
                client, ws = await self._handshake(language)
                break
            except VoxlineError as exc:
                # The engine lacks this form of the language: the next one is tried.
                if exc.field != "language":
                    raise
        else:
            language = last
            client, ws = await self._handshake(language)
        self.engine_language = language
        self._client, self._websocket, self.session = client, ws, client.ready
        self._relay_queue = asyncio.Queue()
        await self._call_event_handler("on_connected")

    def _languages(self) -> list[str | None]:
        if "language" in self._config:
            return [self._config["language"]]
        language = self._settings.language
        if isinstance(language, str) and language:
            return list(language_candidates(language))
        return [None]

    async def _handshake(self, language: str | None) -> tuple[Client, Any]:
        config = dict(self._config)
        if language is not None:
            config["language"] = language
        opener = connect(
            self._url,
            api_key=self._api_key,
            voice=self._settings.voice or None,
            response_format="pcm",
            sample_rate=self.sample_rate,
            word_timestamps=self._word_timestamps,
            **config,
        )
        async with asyncio.timeout(opener.open_timeout):
            ws = await self._websocket_connect(
                opener.url,
                max_size=None,
                additional_headers=opener.headers,
                subprotocols=[EXTENSIONS],
            )
            try:
                with contextlib.suppress(websockets.ConnectionClosed):
                    # A server refusing the connection (a bad key) may have closed it already;
                    # its error message is still read below.
                    await ws.send(json.dumps(opener.config))
                ready = await first_message(ws)
            except BaseException:
                await ws.close()
                raise
        return Client(ws, ready), ws

    async def _disconnect_websocket(self) -> None:
        await self.stop_all_metrics()
        await self._close_client()

    async def _close_client(self, keep: str | None = None) -> None:
        """Close the connection (if any) and end the audio contexts of its turns but `keep`,
        whose text goes on on the next connection."""
        client, self._client, self._websocket = self._client, None, None
        for context_id in dict.fromkeys(t.context_id for t in self._turns):
            if context_id != keep:
                await self._end_context(context_id)
        self._turns.clear()
        self._open = None
        if client is not None:
            await client.aclose()
            await self._call_event_handler("on_disconnected")

    async def _ensure_connected(self, context_id: str) -> Client | None:
        if self._is_connected():
            return self._client
        # The connection dropped (a server restart, an idle or expired session): connect now
        # rather than wait out the receive task's backoff, which this replaces.
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._close_client(keep=context_id)
        await self._connect()
        return self._client if self._is_connected() else None

    # --- text out ----------------------------------------------------------------------------

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        if self._ending:
            log.debug("voxline: not speaking %r: the pipeline is ending", text)
            return
        for retry in (False, True):
            client = await self._ensure_connected(context_id)
            if client is None:
                yield ErrorFrame(error=f"voxline: not connected to {self._url}")
                return
            try:
                await self._send_text(client, text, context_id)
                break
            except VoxlineError as exc:
                if retry or not client.closed:
                    yield ErrorFrame(error=f"voxline: {exc}")
                    return
                # The connection died under this text: it goes on a new one.
        await self.start_tts_usage_metrics(text)
        yield None  # the audio arrives on the receive task

    async def _send_text(self, client: Client, text: str, context_id: str) -> None:
        if self._open is not None and self._open.context_id != context_id:
            await self._end_open_turn(client)
        utterance = await client.send(text)
        if not self._is_streaming_tokens:
            await client.flush()  # pipecat cut a whole sentence: no need to wait for more
        if utterance is not None and (self._open is None or self._open.utterance is not utterance):
            self._open = _Turn(utterance, context_id)
            self._turns.append(self._open)
            self._relay_queue.put_nowait(self._open)

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn ends: its utterance is ended (`input.done`), its last sentence queued."""
        client = self._client
        if client is None or self._open is None:
            return
        if context_id is not None and self._open.context_id != context_id:
            return
        try:
            await self._end_open_turn(client)
        except VoxlineError as exc:
            await self.push_error(error_msg=f"voxline: {exc}")

    async def _end_open_turn(self, client: Client) -> None:
        self._open = None
        await client.done()

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        await self.stop_all_metrics()
        client = self._client
        if client is not None and not client.closed and not self._keeps_uninterruptible():
            # Cancels every utterance of the connection; the relay sees each end Cancelled.
            await client.cancel()
            self._open = None
        await super().on_audio_context_interrupted(context_id)

    def _keeps_uninterruptible(self) -> bool:
        """Whether speech that must not be interrupted is still being synthesized: a cancel
        would stop it too (it is connection-wide), so the interrupted audio is dropped here
        as it arrives instead."""
        for turn in self._turns:
            context = self._tts_contexts.get(turn.context_id)
            if context is not None and not context.interruptible and not turn.utterance.finished:
                return True
        return False

    # --- audio in ----------------------------------------------------------------------------

    async def _receive_messages(self) -> None:
        """Hand each utterance's events to its audio context, in order (the server delivers
        utterances one after another). Returns when the connection closes between turns and
        raises when it fails during one: pipecat's receive task then reconnects."""
        client, ws, turns = self._client, self._websocket, self._relay_queue
        if client is None or ws is None:
            raise ConnectionError(f"voxline: not connected to {self._url}")
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                next_turn = asyncio.ensure_future(turns.get())
                await asyncio.wait({next_turn, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not next_turn.done():
                    next_turn.cancel()
                    log.info("voxline: the server closed the connection: %s", ws.close_code)
                    return
                await self._relay(next_turn.result())
        finally:
            closed.cancel()

    async def _relay(self, turn: _Turn) -> None:
        try:
            async for event in turn.utterance.events():
                await self._on_event(turn, event)
        except VoxlineError as exc:
            # The connection is gone: end the contexts that wait for it (the next turn goes
            # on a new connection) rather than let each one time out.
            await self.push_error(error_msg=f"voxline: {exc}")
            for context_id in dict.fromkeys(t.context_id for t in [turn, *self._turns]):
                await self._end_context(context_id)
            self._turns.clear()
            self._open = None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._turns.remove(turn)

    async def _on_event(self, turn: _Turn, event: Event) -> None:
        context_id = turn.context_id
        if isinstance(event, Audio):
            if turn.audio_bytes == 0:
                await self.stop_ttfb_metrics()
            turn.audio_bytes += len(event.data)
            frame = TTSAudioRawFrame(event.data, self.sample_rate, 1, context_id=context_id)
            await self.append_to_audio_context(context_id, frame)
        elif isinstance(event, AudioStart):
            turn.sentence_at = turn.audio_bytes / (2 * self.sample_rate)
        elif isinstance(event, Words):
            times = [(w.word, turn.sentence_at + w.start_ms / 1000) for w in event.words]
            await self.add_word_timestamps(times, context_id)
        elif isinstance(event, (SentenceError, ServerError)):
            await self.push_error(error_msg=f"voxline: {event.code}: {event.message}")
        elif isinstance(event, UtteranceDone):
            await self._end_context(context_id)
        elif isinstance(event, Cancelled):
            log.debug("voxline: utterance %s of %s cancelled", event.utterance, context_id)

    async def _end_context(self, context_id: str) -> None:
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)
