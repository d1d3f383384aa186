"""Continuous batching: one loop per model that steps every active sentence together, admits
new ones at step boundaries (their prefill batched), decodes every new frame to PCM at once,
and retires finished or cancelled sentences, freeing their slots for the next step.

The loop runs on the thread that loaded the model (see `run`). The event loop hands it
sentences with `submit()` and gets PCM back through each stream's `emit`, called by
`deliver` once per step for all streams together (one wake-up of the event loop per step,
not per stream: each wake-up competes with this thread for the GIL).
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from voxline.shared import metrics
from voxline.worker.engines.base import Cancellation, EngineError
from voxline.worker.engines.pocket.backbone import Backbone, Sentence
from voxline.worker.engines.pocket.capacity import CapacityModel
from voxline.worker.engines.pocket.codec import CodecState, StreamingDecoder
from voxline.worker.engines.pocket.voices import Voices

log = logging.getLogger("voxline.worker.pocket")

T = TypeVar("T")
END = object()  # emitted once a stream has nothing more to give


@dataclass(eq=False, slots=True)
class Stream:
    """One sentence from submission to its last PCM chunk."""

    text: str
    voice: str
    seed: int
    cancel: Cancellation
    emit: Callable[[object], None]  # a PCM chunk (int16), an EngineError or END; via deliver
    first_chunk_frames: int = 1
    ref_audio: str | None = None
    max_frames: int | None = None
    sentence: Sentence | None = None
    codec: CodecState | None = None
    pending: list[torch.Tensor] = field(default_factory=list)
    chunks: int = 0

    # An admitted stream (in the scheduler's active list) has both its sentence and its codec
    # state; these say so to the type checker.

    @property
    def admitted_sentence(self) -> Sentence:
        assert self.sentence is not None
        return self.sentence

    @property
    def admitted_codec(self) -> CodecState:
        assert self.codec is not None
        return self.codec


@dataclass(frozen=True, slots=True)
class _Call:
    function: Callable[[], object]
    future: concurrent.futures.Future

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.function())
        except BaseException as exc:  # handed to the caller, who decides
            self.future.set_exception(exc)


@dataclass(slots=True)
class Stats:
    steps: int = 0
    admitted: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    max_batch: int = 0
    backbone_s: float = 0.0
    decoder_s: float = 0.0
    frames: int = 0


class Scheduler:
    def __init__(
        self,
        backbone: Backbone,
        decoder: StreamingDecoder,
        voices: Voices,
        *,
        max_slots: int,
        capacity: CapacityModel,
        deliver: Callable[[list[tuple[Stream, object]]], None] | None = None,
    ) -> None:
        self.backbone = backbone
        self.decoder = decoder
        self.voices = voices
        self.max_slots = max_slots
        self.capacity = capacity
        self.stats = Stats()
        self.deliver = deliver or _deliver_here
        self._outbox: list[tuple[Stream, object]] = []
        self._inbox: queue.SimpleQueue[Stream | _Call | None] = queue.SimpleQueue()
        self._waiting: list[Stream] = []
        self._active: list[Stream] = []
        self._stopping = False

    # -- the event loop's side ---------------------------------------------------------------

    def request_stop(self) -> None:
        self._inbox.put(None)

    def submit(self, stream: Stream) -> None:
        self._inbox.put(stream)

    def call(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `function` on the loop's thread between steps (benchmarks run their baseline
        there, on the same footing as the scheduler)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._inbox.put(_Call(function, future))
        return future

    @property
    def slots(self) -> int:
        """How many sentences this model can run at once and keep each faster than real time."""
        return min(self.max_slots, self.capacity.streams())

    def drain(self) -> None:
        """Step until nothing is left, on the calling thread (calibration, tests)."""
        with torch.inference_mode():
            while True:
                while True:
                    try:
                        self._take(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                if not self._active and not self._waiting:
                    return
                self._iterate()
                self._flush()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """The loop, until `request_stop()`. Run it on the thread that loaded the model: torch
        run from a second thread after a first has used it was 1.6x slower per step here
        (each calling thread gets its own OpenMP team, and the idle one gets in the way)."""
        with torch.inference_mode():
            self._loop()

    def _loop(self) -> None:
        while not self._stopping:
            if not self._active and not self._waiting:
                self._take(self._inbox.get())  # idle: block until work arrives
            while True:
                try:
                    self._take(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if self._stopping:
                break
            if not self._active and not self._waiting:
                continue
            try:
                self._iterate()
            except Exception:  # a bug must not leave callers waiting forever
                log.exception("pocket scheduler step failed")
                for stream in self._active + self._waiting:
                    self._fail(stream, EngineError("engine failure: scheduler step failed"))
                self._active.clear()
                self._waiting.clear()
            self._flush()
        for stream in self._active + self._waiting:
            self._fail(stream, EngineError("worker shutting down"))
        self._flush()

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self.deliver(batch)

    def _take(self, item: Stream | _Call | None) -> None:
        if item is None:
            self._stopping = True
        elif isinstance(item, _Call):
            item.run()
        else:
            self._waiting.append(item)

    def _iterate(self) -> None:
        self._drop_cancelled()
        admitted = self._admit()
        running = [s for s in self._active if s not in admitted]
        started = time.perf_counter()
        latents: list[tuple[Stream, torch.Tensor]] = []
        if admitted:
            out = self.backbone.admit([s.admitted_sentence for s in admitted])
            latents += list(zip(admitted, out, strict=True))
        if running:
            out = self.backbone.step([s.admitted_sentence for s in running])
            latents += list(zip(running, out, strict=True))
        backbone_done = time.perf_counter()
        self._decode(latents)
        finished = time.perf_counter()
        stats = self.stats
        stats.steps += 1
        stats.frames += len(latents)
        stats.max_batch = max(stats.max_batch, len(latents))
        metrics.engine_step(len(latents))
        stats.backbone_s += backbone_done - started
        stats.decoder_s += finished - backbone_done
        if not admitted:  # prefill spikes are transient: fit the steady step cost only
            self.capacity.observe(len(running), finished - started)
        self._retire()

    def _drop_cancelled(self) -> None:
        for stream in [s for s in self._waiting if s.cancel.is_set()]:
            self._waiting.remove(stream)
            self.stats.cancelled += 1
            self._outbox.append((stream, END))
        for stream in [s for s in self._active if s.cancel.is_set()]:
            self._active.remove(stream)
            self.backbone.release(stream.admitted_sentence)
            self.stats.cancelled += 1
            self._outbox.append((stream, END))

    def _admit(self) -> list[Stream]:
        room = min(self.backbone.free_slots, self.max_slots - len(self._active))
        admitted: list[Stream] = []
        while self._waiting and len(admitted) < room:
            stream = self._waiting.pop(0)
            try:
                prompt = self.voices.prompt(
                    stream.text, stream.voice, stream.ref_audio, stream.max_frames
                )
            except EngineError as exc:
                self._fail(stream, exc)
                continue
            stream.sentence = Sentence(
                text_ids=prompt.text_ids,
                prefix=prompt.prefix,
                frames_after_eos=prompt.frames_after_eos,
                max_frames=prompt.max_frames,
                seed=stream.seed,
            )
            stream.codec = self.decoder.new_state()
            admitted.append(stream)
        self._active.extend(admitted)
        self.stats.admitted += len(admitted)
        return admitted

    def _decode(self, latents: list[tuple[Stream, torch.Tensor]]) -> None:
        """Turn new frames into PCM: every frame at once, except that a stream's first chunk
        waits for its `first_chunk_frames`; streams needing the same frame count share a call."""
        groups: dict[int, list[Stream]] = {}
        for stream, latent in latents:
            stream.pending.append(latent)
            want = stream.first_chunk_frames if stream.chunks == 0 else 1
            if len(stream.pending) >= want or stream.admitted_sentence.finished:
                groups.setdefault(len(stream.pending), []).append(stream)
        for streams in groups.values():
            batch = torch.stack([torch.stack(s.pending) for s in streams])
            pcm = self.decoder.step(batch, [s.admitted_codec for s in streams])
            audio = np.clip(pcm.numpy() * 32767.0, -32768, 32767).astype(np.int16)
            for stream, row in zip(streams, audio, strict=True):
                stream.pending.clear()
                stream.chunks += 1
                self._outbox.append((stream, row))

    def _retire(self) -> None:
        for stream in [s for s in self._active if s.admitted_sentence.finished]:
            self._active.remove(stream)
            self.backbone.release(stream.admitted_sentence)
            self.stats.completed += 1
            self._outbox.append((stream, END))

    def _fail(self, stream: Stream, error: EngineError) -> None:
        self.stats.failed += 1
        if stream.sentence is not None:
            self.backbone.release(stream.sentence)
        self._outbox.append((stream, error))


def _deliver_here(batch: list[tuple[Stream, object]]) -> None:
    for stream, item in batch:
        stream.emit(item)
