"""The synthesis loop, written once: engine chunks in, encoded audio out to a sink. What a sink
does with them is the job kind's business (sinks.py): stream them as events to a listening
front end, or collect a batch sentence whole."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from voxline.shared import metrics
from voxline.shared.audio.sentences import SentenceEncoder
from voxline.shared.wire import Job
from voxline.worker.engines.base import Cancellation, Engine, EngineError, SynthesisRequest, Word
from voxline.worker.outcomes import Outcome, Tally


class Stopped(Exception):
    """A check that ran beside the synthesis stopped the sentence (cancelled, or orphaned)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class Sink(Protocol):
    """Where one sentence's audio goes. Any hook may raise Stopped."""

    async def words(self, words: list[Word]) -> None: ...

    async def audio(self, data: bytes) -> None: ...

    async def done(self) -> None:
        """The sentence is whole (its last audio went to `audio`)."""

    async def stopped(self) -> None:
        """The token was set and the synthesis broke off; raise Stopped to name why."""

    async def failed(self, exc: Exception) -> None:
        """The engine (or the sink's own writes) failed the sentence."""

    async def interrupted(self) -> Outcome:
        """The worker is shutting down mid-sentence: RELEASED to hand it back, or FAILED."""


def request(job: Job) -> SynthesisRequest:
    return SynthesisRequest(
        text=job.text,
        voice=job.voice,
        language=job.language,
        speed=job.speed,
        word_timestamps=job.word_timestamps,
        extra=job.extra,
        opens_utterance=job.sentence == 0,
    )


async def synthesize(
    engine: Engine,
    job: Job,
    token: Cancellation,
    encoder: SentenceEncoder,
    sink: Sink,
    tally: Tally,
) -> None:
    """Run the engine on `job` into `sink`, and set the tally's outcome (Stopped propagates,
    and so does CancelledError once the sink said what the job becomes)."""
    info = engine.info
    tally.started = 1
    began, samples = time.perf_counter(), 0
    try:
        async with contextlib.aclosing(engine.synthesize(request(job), token)) as chunks:
            async for chunk in chunks:
                if token.is_set():
                    tally.chunks_after_cancel = 1
                    break
                tally.chunks += 1
                samples += len(chunk.pcm)
                if chunk.words:
                    await sink.words(chunk.words)
                if data := encoder.encode(chunk.pcm):
                    await sink.audio(data)
        if token.is_set():
            await sink.stopped()
            tally.outcome = Outcome.CANCELLED
            return  # whoever waits has moved on: say nothing more
        if tail := encoder.finish():
            await sink.audio(tail)
        await sink.done()
        tally.outcome = Outcome.COMPLETED
        metrics.synthesized(info.name, time.perf_counter() - began, samples, info.sample_rate)
    except Stopped:
        raise
    except asyncio.CancelledError:
        tally.outcome = await sink.interrupted()
        raise
    except Exception as exc:
        tally.outcome = Outcome.FAILED
        await sink.failed(exc)


def engine_failure(exc: Exception) -> str:
    """What a listener is told of a failure: the engine's own words, else only its kind."""
    return str(exc) if isinstance(exc, EngineError) else f"engine failure: {type(exc).__name__}"
