"""The `pocket-tts` engine: Kyutai's Pocket TTS through transformers, every 80 ms frame
streamed as soon as it exists, all sentences of the worker stepped as one batch."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import random
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Literal

import numpy as np
from pydantic import Field

from voxline.shared.capabilities import EngineInfo
from voxline.worker.engines.base import (
    AudioChunk,
    Cancellation,
    Engine,
    EngineError,
    SynthesisRequest,
)
from voxline.worker.engines.options import EngineOptions
from voxline.worker.engines.pocket.backbone import Backbone
from voxline.worker.engines.pocket.capacity import CapacityModel
from voxline.worker.engines.pocket.codec import StreamingDecoder
from voxline.worker.engines.pocket.loading import (
    DEFAULT_MODEL,
    configure_threads,
    load,
    resolve_device,
    resolve_dtype,
)
from voxline.worker.engines.pocket.scheduler import END, Scheduler, Stats, Stream
from voxline.worker.engines.pocket.voices import Voices

HONOURED = ("initial_codec_chunk_frames", "max_new_tokens")


class PocketOptions(EngineOptions):
    model: str = DEFAULT_MODEL
    """Hub id or local directory of a transformers-format Pocket TTS checkpoint."""
    device: str = "auto"
    """A torch device (auto: cuda when torch sees a GPU, else cpu)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The backbone's precision (auto: bfloat16 on GPUs and bf16-capable CPUs, else float32)."""
    threads: int | None = Field(None, ge=1)
    """torch CPU threads (default: the CPUs this process may use)."""
    max_slots: int | None = Field(None, ge=1)
    """Sentences stepped at once (default: 256 on CUDA, else 32)."""
    first_chunk_frames: int = Field(1, ge=1)
    """80 ms frames in a sentence's first chunk."""
    headroom: float = Field(0.85, gt=0, le=1)
    """Share of a frame's duration one batched step may take: the capacity is sized to it."""
    seed: int | None = None
    """First of the per-sentence sampling seeds, counted up (default: random)."""


def _dispatch(batch: list[tuple[Stream, object]]) -> None:
    for stream, item in batch:
        stream.emit(item)


class _Either(Cancellation):
    """The worker's cancel, or this engine giving up on the stream (its reader went away)."""

    __slots__ = ("_outer",)

    def __init__(self, outer: Cancellation) -> None:
        super().__init__()
        self._outer = outer

    def is_set(self) -> bool:
        return self._outer.is_set() or super().is_set()


class PocketTTSEngine(Engine):
    Options = PocketOptions

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        max_slots: int | None = None,
        first_chunk_frames: int = 1,
        headroom: float = 0.85,
        seed: int | None = None,
    ) -> None:
        self.model_id = model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.threads = threads
        self.max_slots = max_slots or (256 if self.device.type == "cuda" else 32)
        self.first_chunk_frames = first_chunk_frames
        self.headroom = headroom
        self._seeds = itertools.count(seed) if seed is not None else None
        self._seed_lock = threading.Lock()
        self.scheduler: Scheduler | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def deliver(batch: list[tuple[Stream, object]]) -> None:
            loop.call_soon_threadsafe(_dispatch, batch)

        def main() -> None:
            # One thread loads, tunes and then runs the scheduler: torch is much slower
            # from a second thread (see Scheduler.run).
            try:
                self._start(deliver)
            except BaseException as exc:
                ready.set_exception(exc)
                return
            # Held before start() returns: a close() may clear the attribute at once. Its stop
            # request waits in the scheduler's inbox, so run() then ends at its first turn.
            scheduler = self.scheduler
            assert scheduler is not None  # _start() made it
            ready.set_result(None)
            scheduler.run()

        self._thread = threading.Thread(target=main, name="pocket-torch", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)

    def _start(self, deliver: Callable[[list[tuple[Stream, object]]], None]) -> None:
        configure_threads(self.device, self.threads)
        loaded = load(self.model_id, self.device, self.dtype)
        backbone = Backbone(loaded.model, slots=self.max_slots)
        decoder = StreamingDecoder(loaded.codec)
        voices = Voices(backbone, loaded.processor, loaded.voices_dir)
        frame_seconds = 1.0 / float(loaded.model.config.frame_rate)
        capacity = CapacityModel(frame_seconds, headroom=self.headroom)
        self.scheduler = Scheduler(
            backbone, decoder, voices, max_slots=self.max_slots, capacity=capacity
        )
        backbone.tune(self.max_slots)
        self._calibrate(voices)
        self.scheduler.deliver = deliver  # calibration delivered on its own thread
        task_types = ("CustomVoice", "Base") if voices.can_clone else ("CustomVoice",)
        extra = HONOURED + (("ref_audio",) if voices.can_clone else ())
        self.info = EngineInfo(
            name="pocket-tts",
            sample_rate=decoder.sample_rate,
            voices=voices.names,
            default_voice=voices.names[0],
            languages=("en",),
            word_timestamps=False,
            speed_range=(1.0, 1.0),  # the model has no rate control: refuse other speeds
            task_types=task_types,
            extra_fields=extra,
        )

    def _calibrate(self, voices: Voices) -> None:
        """Time a few steps at two batch sizes before serving, so the first admission
        decisions are informed and the kernels are warm before the first caller waits."""
        scheduler = self.scheduler
        assert scheduler is not None
        for run, size in enumerate((1, 1, min(4, self.max_slots))):
            for _ in range(size):
                scheduler.submit(
                    Stream(
                        text="Calibration sentence for the scheduler.",
                        voice=voices.names[0],
                        seed=0,
                        cancel=Cancellation(),
                        emit=lambda item: None,
                        max_frames=4,
                    )
                )
            scheduler.drain()
            if run == 0:  # the first run pays one-off costs (allocation, kernel choice)
                scheduler.capacity = CapacityModel(
                    scheduler.capacity.frame_seconds, headroom=self.headroom
                )
        scheduler.stats = Stats()

    async def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.request_stop()
            self.scheduler = None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def capacity(self) -> int | None:
        return self.scheduler.slots if self.scheduler is not None else None

    def _seed(self) -> int:
        if self._seeds is None:
            return random.getrandbits(63)
        with self._seed_lock:
            return next(self._seeds)

    async def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        scheduler = self.scheduler
        if scheduler is None:
            raise EngineError("engine not started")
        if not request.text.strip():
            raise EngineError("nothing to say: the sentence is empty")
        items: asyncio.Queue[object] = asyncio.Queue()
        mine = _Either(cancel)
        extra = request.extra
        stream = Stream(
            text=request.text,
            voice=request.voice,
            seed=self._seed(),
            cancel=mine,
            emit=items.put_nowait,  # on the event loop, through deliver
            first_chunk_frames=int(
                extra.get("initial_codec_chunk_frames") or self.first_chunk_frames
            ),
            ref_audio=extra.get("ref_audio"),
            max_frames=extra.get("max_new_tokens"),
        )
        scheduler.submit(stream)
        try:
            while True:
                item = await items.get()
                if item is END or mine.is_set():  # frames already queued are stale now
                    return
                if isinstance(item, EngineError):
                    raise item
                assert isinstance(item, np.ndarray)
                yield AudioChunk(pcm=item)
        finally:
            mine.set()  # a no-op after END; otherwise the reader left: free the slot
