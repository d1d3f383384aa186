"""Pipecat adapter: a `TTSService` that speaks through a voxline server.

    pip install 'voxline[pipecat]'

    from voxline.pipecat import VoxlineTTSService
    tts = VoxlineTTSService(url="ws://127.0.0.1:8000", api_key=..., voice="en")
    pipeline = Pipeline([..., llm, tts, transport.output(), ...])

One voxline WebSocket per service (so per pipeline), opened at start and reused for every
turn: a turn (pipecat's audio context) is one voxline utterance. Each text chunk pipecat
hands over goes out as `input.text` (with `input.flush` when pipecat aggregates sentences,
since the sentence is then known to be whole), the end of the turn as `input.done`, and an
interruption as `input.cancel`. Audio comes back as PCM at the pipeline's output rate (the
server resamples), `audio.words` become pipecat word timestamps (TTSTextFrames timed with
the audio), and TTFB is stopped on the first audio byte of each utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        ErrorFrame,
        Frame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import TTSService
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "voxline.pipecat needs pipecat-ai: install the extra with pip install 'voxline[pipecat]'"
    ) from exc

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
)

log = logging.getLogger("voxline.pipecat")


@dataclass
class _Turn:
    """An utterance in flight and the audio context its audio goes to."""

    utterance: Utterance
    context_id: str
    audio_bytes: int = 0  # so far: where the current sentence starts in the turn's audio
    sentence_at: float = 0.0  # seconds from the turn's first sample to the sentence's


class VoxlineTTSService(TTSService):
    """Text-to-speech through a voxline server's `/v1/audio/speech/stream` WebSocket."""

    def __init__(
        self,
        *,
        url: str = "ws://127.0.0.1:8000",
        api_key: str | None = None,
        voice: str | None = None,
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
        word_timestamps: ask for `audio.words` and push word-timed TTSTextFrames; False for
            an engine that cannot time words (the server refuses the config otherwise).
        sample_rate: output rate (default: the pipeline's audio_out_sample_rate).
        config: more `session.config` fields (`speed`, `split_granularity`...).
        settings: pipecat's runtime settings (`voice`; `language`: a language the engine
            lists); a change of either opens a new connection.
        **kwargs: passed to pipecat's TTSService (`text_aggregation_mode`, ...).
        """
        store = TTSSettings(model=None, voice=voice, language=None)
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
        self._relay: asyncio.Task[None] | None = None
        self._turns: deque[_Turn] = deque()  # in flight, oldest first
        self._relay_queue: asyncio.Queue[_Turn] = asyncio.Queue()  # the relay's next turns
        self._open: _Turn | None = None  # the turn whose utterance takes text
        self.session: dict[str, Any] | None = None  # session.ready of the current connection
        self._ending = False  # stop() ran: no new connection for text that comes after

    def can_generate_metrics(self) -> bool:
        return True

    @property
    def supports_processing_metrics(self) -> bool:
        # run_tts only sends: the audio arrives on the relay task (TTFB measures it).
        return False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self._connect()

    async def stop(self, frame: EndFrame) -> None:
        # The pipeline ends: the open turn's last words play before the contexts drain.
        await self.flush_audio()
        self._ending = True
        await super().stop(frame)
        await self._disconnect()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._disconnect()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._disconnect()

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        if changed.keys() & {"voice", "language"} and self._client is not None:
            # A voice is fixed per connection's config: the next turn uses a new one.
            await self._disconnect()
            await self._connect()
        return changed

    async def _connect(self) -> Client | None:
        config = dict(self._config)
        if isinstance(self._settings.language, str) and "language" not in config:
            config["language"] = self._settings.language
        try:
            client = await connect(
                self._url,
                api_key=self._api_key,
                voice=self._settings.voice or None,
                response_format="pcm",
                sample_rate=self.sample_rate,
                word_timestamps=self._word_timestamps,
                **config,
            )
        except (VoxlineError, OSError) as exc:
            await self.push_error(error_msg=f"voxline: cannot connect to {self._url}: {exc}")
            await self._call_event_handler("on_connection_error", str(exc))
            return None
        self._client, self.session = client, client.ready
        self._turns.clear()
        self._open = None
        self._relay_queue = asyncio.Queue()
        self._relay = self.create_task(self._relay_loop(self._relay_queue), name="voxline-relay")
        await self._call_event_handler("on_connected")
        return client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if self._relay is not None:
            await self.cancel_task(self._relay)
            self._relay = None
        if client is not None:
            await client.aclose()
            await self._call_event_handler("on_disconnected")
        self._turns.clear()
        self._open = None

    # --- text out ----------------------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        client = self._client
        if self._ending:
            log.debug("voxline: not speaking %r: the pipeline is ending", text)
            return
        if client is None or client.closed:
            await self._disconnect()
            client = await self._connect()  # the server restarted or closed an idle one
        if client is None:
            yield ErrorFrame(error=f"voxline: not connected to {self._url}")
            return
        try:
            if self._open is not None and self._open.context_id != context_id:
                await self._end_open_turn(client)
            utterance = await client.send(text)
            if not self._is_streaming_tokens:
                await client.flush()  # pipecat cut a whole sentence: no need to wait for more
            if utterance is not None and (
                self._open is None or self._open.utterance is not utterance
            ):
                self._open = _Turn(utterance, context_id)
                self._turns.append(self._open)
                self._relay_queue.put_nowait(self._open)
            await self.start_tts_usage_metrics(text)
        except VoxlineError as exc:
            yield ErrorFrame(error=f"voxline: {exc}")
            return
        yield None  # the audio arrives on the relay task

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

    async def _relay_loop(self, turns: asyncio.Queue[_Turn]) -> None:
        """Hand each utterance's events to its audio context, in order (the server delivers
        utterances one after another)."""
        while True:
            turn = await turns.get()
            try:
                async for event in turn.utterance.events():
                    await self._on_event(turn, event)
            except VoxlineError as exc:
                # The connection is gone: end the contexts that wait for it (the next turn
                # connects again) rather than let each one time out.
                await self.push_error(error_msg=f"voxline: {exc}")
                for context_id in dict.fromkeys(t.context_id for t in [turn, *self._turns]):
                    await self._end_context(context_id)
                self._turns.clear()
                self._open = None
                return
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
