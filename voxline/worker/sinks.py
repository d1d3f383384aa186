"""One sink per job kind (synthesis.Sink): a real-time sentence streams events to the front end
that listens; a batch sentence is collected whole for its coordinator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict

from voxline.shared import metrics
from voxline.shared.connections import TRANSIENT_ERRORS
from voxline.shared.wire import EventKind, Job
from voxline.worker.engines.base import EngineError, Word
from voxline.worker.outcomes import Outcome
from voxline.worker.publisher import Before, SentencePublisher
from voxline.worker.synthesis import Stopped, engine_failure

log = logging.getLogger("voxline.worker")


class RealtimeSink:
    """Events on the session's channel, each sequence-numbered. Nothing goes out before the
    pre-flight checks (cancelled? leased?), which run while the engine starts: a round trip
    less before the first audio."""

    def __init__(
        self,
        job: Job,
        publisher: SentencePublisher,
        preflight: asyncio.Task[Outcome | None],
        settle_in: Before,
    ) -> None:
        self._job = job
        self._publisher = publisher
        self._preflight = preflight
        self._settle_in = settle_in  # acknowledges the job in the write that carries DONE
        self._cleared = False

    async def _send(
        self, kind: EventKind, data: object = None, before: Before | None = None
    ) -> None:
        if not self._cleared:
            await self._check()
            self._cleared = True
        await self._publisher.send(kind, data, before)

    async def _check(self) -> None:
        if verdict := await self._preflight:
            raise Stopped(verdict)

    async def words(self, words: list[Word]) -> None:
        if self._job.word_timestamps:
            await self._send(EventKind.WORDS, [asdict(w) for w in words])

    async def audio(self, data: bytes) -> None:
        await self._send(EventKind.AUDIO, data)

    async def done(self) -> None:
        await self._send(EventKind.DONE, self._publisher.audio_bytes, self._settle_in)

    async def stopped(self) -> None:
        if not self._cleared:
            await self._check()

    async def failed(self, exc: Exception) -> None:
        job = self._job
        if isinstance(exc, TRANSIENT_ERRORS):
            # Redis went away under the sentence: an error event could not reach the front
            # end either, which fails the sentence itself (it notices the loss, or its
            # deadline).
            metrics.redis_error("job")
            log.warning(
                "sentence %s/%d/%d cut off: Redis unreachable (%s)",
                job.session_id,
                job.utterance,
                job.sentence,
                exc,
            )
            return
        if not isinstance(exc, EngineError):
            log.exception("sentence %s/%d/%d failed", job.session_id, job.utterance, job.sentence)
        await self._send(EventKind.ERROR, engine_failure(exc))

    async def interrupted(self) -> Outcome:
        # Shutting down past the drain timeout. Nothing heard yet: hand the job back for
        # another worker to take, unnoticed by the client. Part of it heard: a retry would
        # repeat audio, so the sentence fails now rather than on the front end's deadline.
        if not self._publisher.spoke:
            return Outcome.RELEASED
        with contextlib.suppress(Exception):
            await self._send(EventKind.ERROR, "worker shut down mid-sentence")
        return Outcome.FAILED


class BatchSink:
    """A batch sentence's PCM, whole: nobody listens live, the coordinator assembles the file."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self._pcm = bytearray()
        self.pcm: bytes | None = None  # set once the sentence is whole
        self.error = ""  # why the engine failed it

    async def words(self, words: list[Word]) -> None:
        pass  # a batch file carries no timings

    async def audio(self, data: bytes) -> None:
        self._pcm += data

    async def done(self) -> None:
        self.pcm = bytes(self._pcm)

    async def stopped(self) -> None:
        pass

    async def failed(self, exc: Exception) -> None:
        if not isinstance(exc, EngineError):
            log.exception("batch sentence %s/%d failed", self._job.batch, self._job.sentence)
        self.error = str(exc) if isinstance(exc, EngineError) else type(exc).__name__

    async def interrupted(self) -> Outcome:
        return Outcome.RELEASED  # nobody heard anything: hand it back
