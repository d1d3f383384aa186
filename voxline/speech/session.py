"""One speech session, transport-free: the protocol state machine, its utterances, and the
in-order relay. A transport (transport.py) carries its messages: the WebSocket endpoint's
(api/session.py), or the in-process one REST uses (local.py).

Two tasks run per session. The receiver reads client messages, splits text into sentences
and queues one job per sentence. The relay delivers the sentences of the oldest utterance
strictly in order, while later sentences (synthesized in parallel by other workers) wait in
their own buffers, so sentence N+1 is ready the moment N ends. All socket writes go through
one lock, and every frame of a sentence is sent only after checking under that lock that its
utterance is not cancelled: once `input.cancelled` is written, nothing of those sentences is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from voxline.shared import logs, memory, metrics, protocol
from voxline.shared.protocol import (
    ClientMessage,
    CloseCode,
    ErrorCode,
    ProtocolError,
    SessionConfig,
)
from voxline.shared.wire import Event, EventKind, Job
from voxline.speech.admission import UNAVAILABLE, Refusal, refusal
from voxline.speech.audio_out import ClientAudio
from voxline.speech.backend import Backend
from voxline.speech.splitter import SentenceSplitter
from voxline.speech.transport import Disconnected, Transport

log = logging.getLogger("voxline.speech.session")
# A session that made this many sentences has its freed memory handed back as it ends.
TRIM_AFTER_SENTENCES = 2000


@dataclass(eq=False)
class Sentence:
    index: int
    text: str
    enqueued_at: float  # monotonic: when its text was complete
    events: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    start_sent: bool = False
    finished: bool = False  # audio.done sent
    bytes_sent: int = 0
    first_byte_ms: float | None = None
    last_byte_ms: float | None = None
    attempt_seen: int = 0  # newest delivery of the job heard from
    queued: bool = False  # its job is on a stream (sentences wait locally beyond the cap)
    queued_at: float = 0.0  # monotonic


@dataclass(eq=False)
class Utterance:
    index: int
    splitter: SentenceSplitter
    sentences: list[Sentence] = field(default_factory=list)
    ended: bool = False  # input.done (or session.close) received
    opened_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    done_sent: bool = False  # session.done written
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def undelivered(self) -> list[int]:
        return [s.index for s in self.sentences if not s.finished]

    def is_empty(self) -> bool:
        return not self.sentences and self.splitter.pending_chars == 0


class SpeechSession:
    def __init__(self, hub: Backend, transport: Transport, *, extensions: bool) -> None:
        self.transport = transport
        self.hub = hub
        self.settings = hub.settings
        self.id = uuid.uuid4().hex
        self.config = SessionConfig()
        # Extension messages (session.ready, warning) only for clients that asked for them
        # (the WebSocket subprotocol): vllm-omni's clients fail on types they do not know.
        self.extensions = extensions
        self._honoured: tuple[str, ...] = ()  # compatibility fields the engine honours
        self._waiting_chars = 0  # text of the sentences in _waiting
        self._sentences_made = 0
        self.voice = ""
        self.engine_name = ""  # the pool's engine, as metrics label it
        self.sample_rate = 0
        self.audio: ClientAudio | None = None
        self.utterances: deque[Utterance] = deque()
        self._next_utterance = 0
        self._live: dict[tuple[int, int], Sentence] = {}
        self._send_lock = asyncio.Lock()
        self._relay_wakeup = asyncio.Event()
        self._closing = False
        self._closed = False
        self._enqueued_any = False
        self._last_activity = time.monotonic()
        self._shutting_down = False
        self._in_delivery: Sentence | None = None  # the sentence the relay is delivering
        # Sentences whose jobs wait for room under max_sentences_in_flight.
        self._waiting: deque[tuple[Utterance, Sentence]] = deque()
        self.finished = asyncio.Event()  # run() has returned

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        logs.bind_session(self.id)  # every task of the session inherits it
        try:
            await self._run()
        finally:
            if self._sentences_made >= TRIM_AFTER_SENTENCES:
                # Freed, the many small objects of a big session stay in malloc's arenas.
                self.utterances.clear()
                self._waiting.clear()
                self._live.clear()
                await asyncio.to_thread(memory.trim)
            self.finished.set()

    async def _run(self) -> None:
        """Admission (speech/admission.py, the same for every door), then the session."""
        refused = await refusal(self.hub)
        if refused is not None:
            if refused.reason is Refusal.DRAINING:
                await self._close(CloseCode.SERVICE_RESTART)
            else:
                await self._refuse(
                    ProtocolError(
                        ErrorCode.OVERLOADED, refused.message, close=CloseCode.TRY_AGAIN_LATER
                    )
                )
            return
        self.hub.sessions.add(self)
        metrics.ACTIVE_SESSIONS.inc()
        try:
            await self.hub.leases.acquire(self.id)
            # Pre-connect: the audio channel is live before any sentence can be queued.
            await self.hub.returns.open(self.id, self._on_event)
            await self._configure(await self._first_message())
            await self._serve()
        except Disconnected:
            pass
        except ProtocolError as exc:
            await self._refuse(exc)
        except (RedisError, OSError) as exc:
            metrics.redis_error("session")
            log.warning("session %s: Redis unreachable (%s); refused", self.id, exc)
            await self._refuse(_unavailable())
        except Exception:
            log.exception("session %s failed", self.id)
            await self._refuse(
                ProtocolError(
                    ErrorCode.INTERNAL, "internal server error", close=CloseCode.INTERNAL_ERROR
                )
            )
        finally:
            self.hub.sessions.discard(self)
            metrics.ACTIVE_SESSIONS.dec()
            await self._release()

    async def _serve(self) -> None:
        receiver = asyncio.create_task(self._receive_loop(), name=f"recv-{self.id}")
        relay = asyncio.create_task(self._relay_loop(), name=f"relay-{self.id}")
        limit = self.settings.max_session_seconds
        expiry = asyncio.create_task(asyncio.sleep(limit), name=f"expiry-{self.id}")
        tasks = (receiver, relay, expiry)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Disconnected):
                    await task
        if expiry in done:
            raise ProtocolError(
                ErrorCode.SESSION_EXPIRED,
                f"the connection reached its limit of {limit:g} s; reconnect to go on",
                close=CloseCode.POLICY_VIOLATION,
            )
        for task in done:
            task.result()  # re-raise what ended the session

    async def _release(self) -> None:
        """Stop all outstanding work of this connection, in Redis and locally."""
        self._closed = True
        metrics.cancelled(
            "shutdown" if self._shutting_down else "disconnect",
            sum(len(u.undelivered) for u in self.utterances),
        )
        for utt in self.utterances:
            self._abandon(utt)
        try:
            # Unconditionally: a cancel that failed half-way may have left work behind.
            if self._enqueued_any:
                await self.hub.queue.cancel(self.id)
        except Exception:
            log.exception("session %s: could not cancel its queued work", self.id)
        finally:
            await self.hub.returns.release(self.id)
            with contextlib.suppress(Exception):  # unrenewed, it expires anyway
                await self.hub.leases.release(self.id)

    async def shutdown(self) -> None:
        """The server is going down: finish the sentence being heard, drop the rest of this
        connection's work now (no worker starts it), then close with 1012."""
        self._shutting_down = True
        self._closing = True  # no new text
        current = self._in_delivery
        dropped = [
            (utt.index, sentence.index)
            for utt in self.utterances
            for sentence in utt.sentences
            if not sentence.finished and sentence is not current
        ]
        if dropped:
            try:
                await self.hub.queue.cancel_sentences(self.id, dropped)
            except Exception:
                log.exception("session %s: could not cancel its queued work", self.id)
        if current is None:
            await self._close(CloseCode.SERVICE_RESTART)
        self._relay_wakeup.set()
        for utt in self.utterances:
            utt.changed.set()

    def abort_outstanding(self, reason: str) -> None:
        """Fail every sentence queued or in flight (its audio can no longer arrive); each
        gets its error and audio.done in order, and the session goes on."""
        for utt in self.utterances:
            for sentence in utt.sentences:
                if not sentence.finished:
                    _abort(sentence, reason)

    async def force_restart(self) -> None:
        await self._close(CloseCode.SERVICE_RESTART)

    async def _refuse(self, exc: ProtocolError) -> None:
        with contextlib.suppress(Disconnected):
            await self._send_json(exc.to_message())
        if exc.close is not None:
            await self._close(exc.close)

    async def _close(self, code: CloseCode) -> None:
        async with self._send_lock:
            self._closed = True
            if self.transport.open:
                with contextlib.suppress(Exception):
                    await self.transport.close(int(code))

    # --- receiving ------------------------------------------------------------------------

    async def _first_message(self) -> dict[str, Any]:
        def not_configured(detail: str) -> ProtocolError:
            return ProtocolError(
                ErrorCode.NOT_CONFIGURED,
                f"the first message must be session.config ({detail})",
                close=CloseCode.POLICY_VIOLATION,
            )

        try:
            message = await asyncio.wait_for(self.transport.receive(), self.settings.config_timeout)
        except TimeoutError:
            raise not_configured(f"none within {self.settings.config_timeout:g} s") from None
        except ProtocolError as exc:
            if exc.code == ErrorCode.TEXT_TOO_LARGE:
                # Not a client that forgot to configure: say what was wrong.
                exc.close = CloseCode.POLICY_VIOLATION
                raise
            raise not_configured(exc.message) from None
        if message.type != "session.config":
            raise not_configured(f"got {message.type}")
        return message.data

    async def _configure(self, data: dict[str, Any]) -> None:
        engine, _ = await self.hub.pool.engine()
        if engine is None:
            raise ProtocolError(
                ErrorCode.OVERLOADED,
                "no TTS worker is available; try again later",
                close=CloseCode.TRY_AGAIN_LATER,
            )
        self.config = protocol.parse_config(data, engine)
        self._honoured = engine.extra_fields
        self.voice = self.config.voice or engine.default_voice
        self.engine_name = engine.name
        self.sample_rate = protocol.output_rate(self.config, engine)
        config = self.config
        audio = self.audio
        if audio is None or (audio.fmt, audio.rate, audio.stream) != (
            config.response_format,
            self.sample_rate,
            config.stream_audio,
        ):
            # Kept when a new config leaves the output as it was: the stream goes on.
            self.audio = ClientAudio(
                config.response_format, self.sample_rate, stream=config.stream_audio
            )
        if self.extensions:
            await self._send_json(
                protocol.session_ready(
                    self.id, self.config.response_format, self.sample_rate, self.voice, engine.name
                )
            )
        for name in config.ignored_hints(engine.extra_fields):
            text = f"{name}: engine {engine.name} cannot honour this hint; it is ignored"
            if self.extensions:
                await self._send_json(protocol.warning("ignored_field", text, field=name))
            else:
                log.info("session %s: %s", self.id, text)

    async def _receive_loop(self) -> None:
        while True:
            try:
                idle = self.settings.idle_timeout
                quiet = time.monotonic() - self._last_activity
                # While audio flows the timer is only re-armed; idle counts from the later of
                # the last message and the end of the last delivery.
                wait = idle if self._delivering() else max(idle - quiet, 0.05)
                try:
                    # A timeout scope, not wait_for: no task per message (on 3.11 wait_for
                    # runs the read in a new task, a loop turn later).
                    async with asyncio.timeout(wait):
                        message = await self.transport.receive()
                except TimeoutError:
                    if self._delivering() or time.monotonic() - self._last_activity < idle:
                        continue
                    await self._close(CloseCode.NORMAL)
                    return
                self._last_activity = time.monotonic()
                await self._handle(message)
            except ProtocolError as exc:
                if exc.close is not None:
                    raise
                # An error of a single message leaves the session as it was.
                await self._send_json(exc.to_message())

    async def _handle(self, message: ClientMessage) -> None:
        kind = message.type
        if kind == "input.text":
            await self._on_text(message.text)
        elif kind == "input.flush":
            utt = self._current()
            if utt is not None:
                await self._enqueue_all(utt, utt.splitter.flush())
        elif kind == "input.done":
            await self._end_utterance(self._open_utterance())
        elif kind == "input.cancel":
            await self._cancel()
        elif kind == "session.close":
            self._closing = True
            utt = self._current()
            if utt is not None:
                if utt.is_empty():
                    self._drop_empty(utt)
                else:
                    await self._end_utterance(utt)
            self._relay_wakeup.set()
        elif kind == "session.config":
            await self._reconfigure(message.data)

    async def _on_text(self, text: str) -> None:
        if self._closing:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "the session is closing")
        if not text:
            return  # LLM streams send empty deltas; they must not open an utterance
        current = self._current()
        buffered = current.splitter.pending_chars if current is not None else 0
        limit = self.settings.max_buffer_chars
        if buffered + len(text) > limit:
            raise ProtocolError(
                ErrorCode.TEXT_TOO_LARGE,
                f"buffered text would exceed {limit} characters; text refused",
            )
        # What this connection makes the server hold: text not yet split plus sentences not
        # yet on the streams (held back by max_sentences_in_flight).
        limit = self.settings.max_pending_chars
        if buffered + self._waiting_chars + len(text) > limit:
            raise ProtocolError(
                ErrorCode.TEXT_TOO_LARGE,
                f"text waiting to be spoken would exceed {limit} characters; text refused",
            )
        utt = self._open_utterance()
        await self._enqueue_all(utt, utt.splitter.feed(text))
        seconds = self.settings.max_utterance_seconds
        if time.monotonic() - utt.opened_at > seconds:
            # An utterance that never ends would hold its buffer and order forever: end it
            # here (as input.done would) and say so; more text starts the next one.
            await self._end_utterance(utt)
            raise ProtocolError(
                ErrorCode.UTTERANCE_TOO_LONG,
                f"utterance {utt.index} reached its limit of {seconds:g} s and was ended; "
                "further text starts a new utterance",
            )

    async def _reconfigure(self, data: dict[str, Any]) -> None:
        # An utterance whose session.done is out is over, even before the relay forgets it.
        if any(not u.is_empty() and not u.done_sent for u in self.utterances):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "session.config is only accepted between utterances",
            )
        for utt in list(self.utterances):
            if utt.is_empty():
                self._drop_empty(utt)
        await self._configure(data)

    # --- utterances -----------------------------------------------------------------------

    def _current(self) -> Utterance | None:
        """The utterance still taking text, if any."""
        if self.utterances and not self.utterances[-1].ended:
            return self.utterances[-1]
        return None

    def _open_utterance(self) -> Utterance:
        utt = self._current()
        if utt is None:
            utt = Utterance(
                self._next_utterance,
                SentenceSplitter(
                    max_sentence_chars=self.settings.max_sentence_chars,
                    granularity=self.config.split_granularity,
                ),
            )
            self._next_utterance += 1
            self.utterances.append(utt)
            self._relay_wakeup.set()
        return utt

    def _drop_empty(self, utt: Utterance) -> None:
        """Forget an utterance that never held anything, as if it had not been opened."""
        if utt in self.utterances:
            self.utterances.remove(utt)
        self._next_utterance = min(self._next_utterance, utt.index)
        utt.cancelled = True  # releases a relay waiting on it
        utt.changed.set()

    async def _end_utterance(self, utt: Utterance) -> None:
        await self._enqueue_all(utt, utt.splitter.flush())
        utt.ended = True
        utt.changed.set()

    async def _enqueue_all(self, utt: Utterance, texts: list[str]) -> None:
        if not texts:
            return
        now = time.monotonic()
        for text in texts:
            sentence = Sentence(len(utt.sentences), text, now)
            # Registered before the job exists, so no event can arrive for an unknown sentence.
            utt.sentences.append(sentence)
            self._live[(utt.index, sentence.index)] = sentence
            self._waiting.append((utt, sentence))
            self._waiting_chars += len(text)
        self._sentences_made += len(texts)
        utt.changed.set()
        await self._submit()

    async def _submit(self) -> None:
        """Queue waiting sentences while this session has fewer than max_sentences_in_flight
        on the streams: one long text cannot fill the queue ahead of other callers, and a
        barge-in has less to cancel."""
        room = self.settings.max_sentences_in_flight - sum(
            1 for u in self.utterances for s in u.sentences if s.queued and not s.finished
        )
        batch: list[tuple[Utterance, Sentence]] = []
        while room > 0 and self._waiting:
            utt, sentence = self._waiting.popleft()
            self._waiting_chars -= len(sentence.text)
            if utt.cancelled or sentence.finished:
                continue
            batch.append((utt, sentence))
            room -= 1
        if not batch:
            return
        now = time.monotonic()
        for _, sentence in batch:
            sentence.queued, sentence.queued_at = True, now
        jobs = [self._job(utt, sentence) for utt, sentence in batch]
        self._enqueued_any = True
        try:
            if not self.hub.returns.connected.is_set():
                # Redis may be back, but this process has not re-subscribed yet: the audio would
                # be published into the void and the sentence fail only on queue_timeout.
                raise ConnectionError("the return path is reconnecting")
            await self.hub.queue.enqueue(*jobs)
        except (RedisError, OSError) as exc:
            metrics.redis_error("session")
            log.warning("session %s: could not queue %d sentences: %s", self.id, len(jobs), exc)
            for _, sentence in batch:
                _abort(sentence, "could not queue the sentence (Redis down)")

    def _job(self, utt: Utterance, sentence: Sentence) -> Job:
        config = self.config
        assert self.audio is not None  # configured before any text
        fmt, stream = self.audio.worker_format
        return Job(
            session_id=self.id,
            utterance=utt.index,
            sentence=sentence.index,
            text=sentence.text,
            voice=self.voice,
            format=fmt,
            sample_rate=self.sample_rate,
            stream_audio=stream,
            speed=config.speed,
            language=config.language,
            word_timestamps=config.word_timestamps,
            enqueued_at=time.time(),
            extra=config.extra_fields(self._honoured),
        )

    async def _cancel(self) -> None:
        """Barge-in: every queued and in-flight sentence of this connection stops."""
        async with self._send_lock:
            # Under the lock: an utterance whose session.done is already out is not cancelled.
            victims = [u for u in self.utterances if not u.done_sent]
            if not victims:
                victims = [self._open_utterance()]  # a cancel always ends one utterance
            self.utterances.clear()
            for utt in victims:
                utt.cancelled = True  # from here on the relay sends nothing of it
                self._abandon(utt)
            metrics.cancelled("barge_in", sum(len(u.undelivered) for u in victims))
            try:
                await self.hub.queue.cancel(self.id, [u.index for u in victims])
            except Exception:
                # The client is told regardless; _release retries session-wide at the end.
                log.exception("session %s: cancel did not reach Redis", self.id)
            for utt in victims:
                undelivered = utt.undelivered
                for sentence in utt.sentences:
                    if sentence.start_sent and not sentence.finished:
                        # Close the framing the client already saw open, with what the
                        # encoder still held of it (the stream stays valid).
                        await self._send_bytes_locked(sentence, self._end_audio())
                        await self._send_json_locked(
                            self._done_message(utt, sentence, cancelled=True)
                        )
                await self._send_json_locked(protocol.input_cancelled(utt.index, undelivered))
        if self._closing:
            await self._close(CloseCode.NORMAL)

    def _abandon(self, utt: Utterance) -> None:
        """Forget an utterance's sentences locally and wake a relay waiting on them."""
        for sentence in utt.sentences:
            self._live.pop((utt.index, sentence.index), None)
            sentence.events.put_nowait(None)
        if any(waiting is utt for waiting, _ in self._waiting):
            # Its text no longer counts against max_pending_chars (a barge-in frees room).
            self._waiting = deque(w for w in self._waiting if w[0] is not utt)
            self._waiting_chars = sum(len(s.text) for _, s in self._waiting)
        utt.changed.set()
        self._relay_wakeup.set()

    def _delivering(self) -> bool:
        return any(u.undelivered for u in self.utterances)

    # --- return path ----------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        sentence = self._live.get((event.utterance, event.sentence))
        if sentence is None:
            return
        if event.attempt > sentence.attempt_seen:
            if sentence.attempt_seen and not sentence.start_sent:
                # A retry of a job whose dead worker's audio the client has not heard yet
                # (still buffered behind earlier sentences): drop that audio, play the retry.
                _drop_older(sentence.events, event.attempt)
            sentence.attempt_seen = event.attempt
        sentence.events.put_nowait(event)

    # --- relay ----------------------------------------------------------------------------

    async def _relay_loop(self) -> None:
        while True:
            if self._shutting_down:
                await self._close(CloseCode.SERVICE_RESTART)
                return
            if not self.utterances:
                if self._closing:
                    await self._close(CloseCode.NORMAL)
                    return
                self._relay_wakeup.clear()
                await self._relay_wakeup.wait()
                continue
            utt = self.utterances[0]
            await self._deliver_utterance(utt)
            if self.utterances and self.utterances[0] is utt:
                self.utterances.popleft()

    async def _deliver_utterance(self, utt: Utterance) -> None:
        position = 0
        while not utt.cancelled and not self._shutting_down:
            if position < len(utt.sentences):
                sentence = self._in_delivery = utt.sentences[position]
                try:
                    if not sentence.queued:
                        await self._submit()
                    await self._deliver_sentence(utt, sentence)
                finally:
                    self._in_delivery = None
                await self._submit()  # its place on the streams is free
                position += 1
            elif utt.ended:
                async with self._send_lock:
                    if not utt.cancelled:
                        utt.done_sent = True
                        await self._send_json_locked(
                            protocol.session_done(utt.index, len(utt.sentences))
                        )
                        self._last_activity = time.monotonic()
                return
            else:
                utt.changed.clear()
                await utt.changed.wait()

    async def _deliver_sentence(self, utt: Utterance, sentence: Sentence) -> None:
        logs.bind_sentence(utt.index, sentence.index)  # the relay's log lines name it
        settings = self.settings
        expected_seq = 0
        attempt = 0  # the delivery of the job whose events are followed
        started = False
        try:
            while True:
                if started:
                    wait = settings.stall_timeout
                else:
                    wait = settings.queue_timeout - (time.monotonic() - sentence.queued_at)
                try:
                    event = await _next_event(sentence.events, wait)
                except TimeoutError:
                    reason = (
                        f"the worker went silent for {settings.stall_timeout:g} s"
                        if started
                        else f"no worker took the sentence within {settings.queue_timeout:g} s"
                    )
                    await self._fail(utt, sentence, reason, stop_worker=True)
                    return
                if event is None:  # cancelled
                    return
                if event.attempt < attempt:
                    continue  # a worker that was given up on (its job was claimed by another)
                if event.attempt > attempt:
                    # The job was (re)delivered: a dead worker's job claimed by a live one, or
                    # dead-lettered after too many deliveries.
                    if event.kind is EventKind.ERROR:
                        await self._fail(utt, sentence, str(event.data), stop_worker=False)
                        return
                    if sentence.start_sent:
                        await self._fail(
                            utt,
                            sentence,
                            "the worker died after part of the sentence was sent; not repeating it",
                            stop_worker=True,
                        )
                        return
                    if attempt:
                        log.info(
                            "session %s sentence %d/%d: retried (delivery %d)",
                            self.id,
                            utt.index,
                            sentence.index,
                            event.attempt,
                        )
                    attempt, expected_seq = event.attempt, 0
                if event.seq != expected_seq:
                    await self._fail(
                        utt,
                        sentence,
                        f"audio lost on the return path (message {expected_seq} missing)",
                        stop_worker=True,
                    )
                    return
                expected_seq += 1
                if event.kind is EventKind.STARTED:
                    started = True
                elif event.kind is EventKind.AUDIO:
                    await self._send_audio(utt, sentence, event.data)
                elif event.kind is EventKind.WORDS:
                    await self._send_sentence_json(
                        utt, sentence, protocol.audio_words(utt.index, sentence.index, event.data)
                    )
                elif event.kind is EventKind.DONE:
                    await self._send_audio(utt, sentence, b"", end=True)
                    await self._send_sentence_json(utt, sentence, None, finish=True)
                    return
                elif event.kind is EventKind.ERROR:
                    await self._fail(utt, sentence, str(event.data), stop_worker=False)
                    return
        finally:
            self._live.pop((utt.index, sentence.index), None)

    async def _send_audio(
        self, utt: Utterance, sentence: Sentence, data: bytes, *, end: bool = False
    ) -> None:
        """Relay a worker chunk in the client's format; `end`: the sentence is complete."""
        if not data and not end:
            return
        async with self._send_lock:
            if not self._may_send(utt):
                return
            assert self.audio is not None
            out = self.audio.chunk(data) if data else b""
            if end:
                out += self.audio.end_sentence()
            if not out and not sentence.start_sent and end:
                return  # a sentence without audio: audio.done alone opens and closes it
            await self._send_start_locked(utt, sentence)
            await self._send_bytes_locked(sentence, out)

    async def _send_bytes_locked(self, sentence: Sentence, data: bytes) -> None:
        if not data:
            return
        try:
            await self.transport.send_audio(data)
        except Exception as exc:  # the peer is gone mid-write
            raise Disconnected from exc
        sentence.bytes_sent += len(data)
        sentence.last_byte_ms = self._ms_since(sentence)
        if sentence.first_byte_ms is None:
            sentence.first_byte_ms = sentence.last_byte_ms

    def _end_audio(self) -> bytes:
        """A sentence ends early (failed, cancelled): the stream encoder's last samples of
        it; a whole-file sentence is dropped."""
        if self.audio is None:
            return b""
        self.audio.drop_sentence()
        return self.audio.end_sentence()

    async def _send_sentence_json(
        self,
        utt: Utterance,
        sentence: Sentence,
        message: dict[str, Any] | None,
        *,
        finish: bool = False,
        error: bool = False,
    ) -> None:
        async with self._send_lock:
            if not self._may_send(utt):
                return
            await self._send_start_locked(utt, sentence)
            if error:
                await self._send_bytes_locked(sentence, self._end_audio())
            if message is not None:
                await self._send_json_locked(message)
            if finish:
                await self._send_json_locked(self._done_message(utt, sentence, error=error))

    async def _fail(
        self, utt: Utterance, sentence: Sentence, reason: str, *, stop_worker: bool
    ) -> None:
        if stop_worker:
            # No worker may start (or go on with) a sentence the client was told failed.
            metrics.CANCELLATIONS.labels("failed_sentence").inc()
            try:
                await self.hub.queue.cancel(self.id, [utt.index], sentence.index)
            except Exception:
                log.exception("session %s: could not cancel a failed sentence", self.id)
        log.warning(
            "session %s sentence %d/%d failed: %s", self.id, utt.index, sentence.index, reason
        )
        await self._send_sentence_json(
            utt,
            sentence,
            protocol.error(ErrorCode.GENERATION_FAILED, reason, sentence_index=sentence.index),
            finish=True,
            error=True,
        )

    def _may_send(self, utt: Utterance) -> bool:
        return not utt.cancelled and not self._closed

    async def _send_start_locked(self, utt: Utterance, sentence: Sentence) -> None:
        if sentence.start_sent:
            return
        sentence.start_sent = True
        await self._send_json_locked(
            protocol.audio_start(
                utt.index,
                sentence.index,
                sentence.text,
                self.config.response_format,
                self.sample_rate,
            )
        )

    def _done_message(
        self, utt: Utterance, sentence: Sentence, *, error: bool = False, cancelled: bool = False
    ) -> dict[str, Any]:
        sentence.finished = True
        metrics.sentence_done(
            self.engine_name,
            sentence.first_byte_ms,
            sentence.last_byte_ms,
            error=error,
            cancelled=cancelled,
        )
        return protocol.audio_done(
            utt.index,
            sentence.index,
            sentence.bytes_sent,
            error=error,
            cancelled=cancelled,
            first_byte_ms=sentence.first_byte_ms,
            finish_ms=sentence.last_byte_ms,
        )

    @staticmethod
    def _ms_since(sentence: Sentence) -> float:
        return round((time.monotonic() - sentence.enqueued_at) * 1000, 1)

    # --- sending --------------------------------------------------------------------------

    async def _send_json(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._send_json_locked(message)

    async def _send_json_locked(self, message: dict[str, Any]) -> None:
        if self._closed or not self.transport.open:
            return
        try:
            await self.transport.send_message(message)
        except Exception as exc:  # the peer is gone mid-write
            raise Disconnected from exc


def _unavailable() -> ProtocolError:
    return ProtocolError(ErrorCode.OVERLOADED, UNAVAILABLE, close=CloseCode.TRY_AGAIN_LATER)


# Outranks every real delivery of a job, so the relay takes it even mid-sentence.
_ABORTED = 2**31


def _abort(sentence: Sentence, reason: str) -> None:
    sentence.events.put_nowait(Event(EventKind.ERROR, 0, sentence.index, 0, reason, _ABORTED))


def _drop_older(events: asyncio.Queue[Event | None], attempt: int) -> None:
    kept = []
    while not events.empty():
        event = events.get_nowait()
        if event is None or event.attempt >= attempt:
            kept.append(event)
    for event in kept:
        events.put_nowait(event)


async def _next_event(events: asyncio.Queue[Event | None], wait: float) -> Event | None:
    """The next event, or TimeoutError after `wait` s; an event already buffered is returned
    even when the deadline has passed (it was in time, the relay was busy elsewhere)."""
    try:
        return events.get_nowait()
    except asyncio.QueueEmpty:
        pass
    async with asyncio.timeout(max(wait, 0.0)):
        return await events.get()
