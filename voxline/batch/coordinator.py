"""The arq job behind one batch job: split the text, feed its sentences to the worker pool a
window at a time, assemble the audio in order, store the file, call back.

Everything it knows lives in Redis, so any arq process can pick a job up where a dead one
left it (restart-safe), and two running the same job by accident do no harm:
- the sentence list is stored once, so every run works on the same sentences;
- a worker stores each sentence's PCM under its index: a sentence made twice is stored once;
- which sentences are queued is recorded with their stream entry ids; a queued sentence
  whose entry is gone without audio (dropped, trimmed) is queued again;
- the file is written last, then the status moves to done in one transaction.
It waits on the job's events stream (XREAD BLOCK), never by polling; arq's own polling only
decides when a job starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import cast

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from voxline.batch import callbacks
from voxline.batch.results import Results, ResultTooLarge
from voxline.shared.audio.codecs import encode_file
from voxline.shared.backoff import Backoff
from voxline.shared.batches import FINAL, Batches, BatchState, BatchStatus
from voxline.shared.config import Settings
from voxline.shared.connections import Client
from voxline.shared.keys import Keys, batch_session
from voxline.shared.wire import Job
from voxline.speech.queue import JobQueue
from voxline.speech.splitter import SentenceSplitter

log = logging.getLogger("voxline.batch")

# Audio read back per round trip when the file is assembled.
_READ_BATCH = 64
_CALLBACK_TRIES = 3
# Seconds before the second try of a callback, doubled for each later one.
_CALLBACK_BACKOFF = 1.0


class Coordinator:
    def __init__(
        self,
        redis: Client,
        keys: Keys,
        settings: Settings,
        batch_id: str,
        *,
        arq: ArqRedis | None = None,
        arq_job_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.id = batch_id
        self.session = batch_session(batch_id)
        self.batches = Batches(
            redis, keys, result_ttl=settings.batch_result_ttl, timeout=settings.batch_timeout
        )
        self.results = Results(redis, keys, settings)
        self._arq = arq
        self._arq_job_id = arq_job_id
        self._stream = keys.shard_of(self.session).batch
        # Queued sentences are checked for a lost entry when nothing happened for this long.
        self._check_every = max(2 * settings.claim_idle, 1.0)
        self._callback_allow = callbacks.parse_allow(settings.callback_allow)

    async def run(self) -> str:
        """Carry the job to a final status (or find it there); returns that status."""
        state = await self.batches.get(self.id)
        if state is None:
            log.warning("batch %s: no such job (expired or deleted)", self.id)
            return "gone"
        if state.status in FINAL:
            return str(state.status)
        async with self._holding_arq_job():
            sentences = await self._sentences(state)
            if not sentences:
                await self._end(state, BatchStatus.FAILED, error="the text has nothing to speak")
                return str(BatchStatus.FAILED)
            await self.batches.set_fields(self.id, status=BatchStatus.RUNNING, total=len(sentences))
            log.info("batch %s: %d sentences", self.id, len(sentences))
            outcome = await self._synthesize(state, sentences)
            if outcome is not None:
                status, error = outcome
                await self._withdraw()
                await self._end(state, status, error=error)
                return str(status)
            return str(await self._assemble(state, len(sentences)))

    async def _sentences(self, state: BatchState) -> list[str]:
        """The job's sentences: split once, with the splitter real-time sessions use."""
        key = self.keys.batch_sentences(self.id)
        stored = await self.redis.lrange(key, 0, -1)
        if stored:
            # Replies are bytes (no decode_responses); redis-py types them bytes | str.
            return [s.decode() for s in cast(list[bytes], stored)]
        splitter = SentenceSplitter(max_sentence_chars=self.settings.max_sentence_chars)
        sentences = [*splitter.feed(state.request.text), *splitter.flush()]
        if sentences:
            # Replaces rather than appends: a second coordinator racing here writes the same
            # list (the same text, the same splitter).
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.rpush(key, *sentences)
                pipe.expire(key, self.settings.batch_result_ttl + int(self.settings.batch_timeout))
                await pipe.execute()
        return sentences

    async def _synthesize(
        self, state: BatchState, sentences: list[str]
    ) -> tuple[BatchStatus, str] | None:
        """Until every sentence has audio (None), or the job was cancelled or a sentence
        failed (the final status and why). Each wake reads the status and the sentences the
        events name; the whole picture (stored audio, queued ids) is read only at start and
        after a quiet spell, when lost sentences are looked for."""
        total, reported = len(sentences), -1
        last = await self._last_event()
        done: set[int] = set()
        queued: dict[int, bytes] = {}
        full = True  # at once: a resumed job's queued sentences may be lost
        while True:
            if full:
                done, queued = await self._stored_and_queued()
                queued = await self._forget_lost(queued, done)
                full = False
            raw, failed = cast(
                list[bytes | None],
                await self.redis.hmget(self.keys.batch(self.id), ["status", "failed"]),
            )
            status = BatchStatus(raw.decode()) if raw else BatchStatus.CANCELLED
            if status in FINAL:
                return status, "cancelled"
            if failed:
                return BatchStatus.FAILED, failed.decode()
            if len(done) == total:
                return None
            if len(done) != reported:
                reported = len(done)
                await self.batches.set_fields(self.id, done=reported)
            queued.update(await self._refill(state, sentences, done, queued))
            last, finished = await self._wait(last)
            done |= {i for i in finished if 0 <= i < total}
            # Quiet for a while (or the event stream skipped some): re-read everything.
            full = not finished or len(done) == total

    async def _stored_and_queued(self) -> tuple[set[int], dict[int, bytes]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hkeys(self.keys.batch_audio(self.id))
            pipe.hgetall(self.keys.batch_queued(self.id))
            done, queued = await pipe.execute()
        return {int(i) for i in done}, {int(i): entry for i, entry in queued.items()}

    async def _last_event(self) -> bytes | str:
        newest = await self.redis.xrevrange(self.keys.batch_events(self.id), count=1)
        # An entry's id is never None (redis-py's type allows it for XCLAIM's replies).
        return cast(bytes, newest[0][0]) if newest else "0-0"

    async def _wait(self, last: bytes | str) -> tuple[bytes | str, list[int]]:
        """Block until a worker stores a sentence (or a cancel wakes us), at most
        `_check_every`; returns the newest event id and the sentences the events name (a
        failure's too: the status read next tells)."""
        reply = await self.redis.xread(
            {self.keys.batch_events(self.id): last}, block=int(self._check_every * 1000)
        )
        assert isinstance(reply, list)  # RESP2's [[stream, entries]] (redis-py: or RESP3's dict)
        entries = [entry for _, batch in (reply or []) for entry in batch]
        if not entries:
            return last, []
        return entries[-1][0], [int(fields[b"s"]) for _, fields in entries]

    async def _forget_lost(self, queued: dict[int, bytes], done: set[int]) -> dict[int, bytes]:
        """Drop queued sentences whose stream entry is gone without their audio (a worker
        skipped it, the stream lost it): they are queued again. Entries are checked before
        the audio: a worker stores the audio before it deletes the entry."""
        waiting = {i: entry for i, entry in queued.items() if i not in done}
        if not waiting:
            return queued
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry in waiting.values():
                pipe.xrange(self._stream, entry, entry, count=1)
            present = await pipe.execute()
        gone = [i for (i, _), found in zip(waiting.items(), present, strict=True) if not found]
        if not gone:
            return queued
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in gone:
                pipe.hexists(self.keys.batch_audio(self.id), str(i))
            stored = await pipe.execute()
        # A worker that handed a sentence back re-queued it under a new id: not lost.
        now = await self.redis.hmget(self.keys.batch_queued(self.id), [str(i) for i in gone])
        lost = [
            i
            for i, has, entry in zip(gone, stored, now, strict=True)
            if not has and entry == waiting[i]
        ]
        if lost:
            log.warning(
                "batch %s: %d queued sentences were lost; queuing again", self.id, len(lost)
            )
            await self.redis.hdel(self.keys.batch_queued(self.id), *map(str, lost))
        return {i: e for i, e in queued.items() if i not in lost}

    async def _refill(
        self,
        state: BatchState,
        sentences: list[str],
        done: set[int],
        queued: dict[int, bytes],
    ) -> dict[int, bytes]:
        """Keep `batch_window` sentences on the stream, in text order; returns what it
        queued (sentence index -> entry id)."""
        outstanding = sum(1 for i in queued if i not in done)
        room = self.settings.batch_window - outstanding
        if room <= 0:
            return {}
        todo = [i for i in range(len(sentences)) if i not in done and i not in queued][:room]
        if not todo:
            return {}
        req = state.request
        jobs = [
            Job(
                session_id=self.session,
                utterance=0,
                sentence=i,
                text=sentences[i],
                voice=req.voice,
                format="pcm",  # the coordinator encodes the whole file
                sample_rate=req.sample_rate,
                stream_audio=True,
                speed=req.speed,
                language=req.language,
                enqueued_at=time.time(),
                batch=self.id,
            )
            for i in todo
        ]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.xadd(self._stream, {"j": job.pack()})
            ids = await pipe.execute()
        added = dict(zip(todo, ids, strict=True))
        await self.redis.hset(
            self.keys.batch_queued(self.id), mapping={str(i): e for i, e in added.items()}
        )
        return added

    async def _withdraw(self) -> None:
        """Stop the job's sentences: queued ones are skipped, running ones stop at their next
        chunk (the cancel every worker hears), and unread entries leave the stream."""
        queue = JobQueue(self.redis, self.keys, maxlen=0, session_ttl=self.settings.session_ttl)
        await queue.cancel(self.session)
        entries = await self.redis.hvals(self.keys.batch_queued(self.id))
        if entries:
            await self.redis.xdel(self._stream, *entries)

    async def _assemble(self, state: BatchState, total: int) -> BatchStatus:
        req = state.request
        pcm = bytearray()
        audio = self.keys.batch_audio(self.id)
        for start in range(0, total, _READ_BATCH):
            fields = [str(i) for i in range(start, min(start + _READ_BATCH, total))]
            parts = await self.redis.hmget(audio, fields)
            if any(part is None for part in parts):
                # Only a job ended meanwhile loses its audio; otherwise let arq run it again.
                if (status := await self.batches.status(self.id)) in FINAL:
                    return status
                raise RuntimeError(f"batch {self.id}: stored audio vanished")
            pcm += b"".join(cast(list[bytes], parts))  # none is None (checked above)
        data = await asyncio.to_thread(encode_file, req.format, bytes(pcm), req.sample_rate)
        try:
            where = await self.results.store(self.id, req.format, data)
        except (ResultTooLarge, OSError) as exc:
            await self._end(state, BatchStatus.FAILED, error=str(exc))
            return BatchStatus.FAILED
        duration = len(pcm) / 2 / req.sample_rate
        written = {"result": where, "bytes": len(data), "duration": f"{duration:.3f}"}
        if not await self._end(state, BatchStatus.DONE, done=total, **written):
            # Cancelled while the file was being made: nobody will fetch it.
            with contextlib.suppress(OSError):
                await self.results.delete(dataclasses.replace(state, result=where))
            return BatchStatus.CANCELLED
        log.info("batch %s: done, %d bytes, %.1f s of audio", self.id, len(data), duration)
        return BatchStatus.DONE

    async def _end(self, state: BatchState, status: BatchStatus, **fields: object) -> bool:
        if not await self.batches.finish(self.id, status, **fields):
            return False
        if state.request.callback_url:
            await self._call_back(state.request.callback_url)
        return True

    async def _call_back(self, url: str) -> None:
        """POST the job's final state to its callback URL (batch/callbacks.py: public
        addresses or `callback_allow` only, no redirects); a failure is recorded on the job
        in a fixed wording (the result stays fetchable), never retried for ever. Logs name
        the URL with its credentials redacted."""
        final = await self.batches.get(self.id)
        if final is None:
            return
        body = json.dumps(final.public()).encode()
        shown = callbacks.redact_url(url)
        outcome = callbacks.Outcome()
        backoff = Backoff(_CALLBACK_BACKOFF)  # uncapped: _CALLBACK_TRIES bounds it
        for attempt in range(_CALLBACK_TRIES):
            if attempt:
                await asyncio.sleep(backoff.next())
            try:
                outcome = await asyncio.to_thread(
                    callbacks.deliver, url, body, self._callback_allow
                )
            except Exception as exc:  # a bug here must not fail the finished job
                log.exception("batch %s: callback to %s raised", self.id, shown)
                outcome = callbacks.Outcome(callbacks.UNREACHABLE, type(exc).__name__)
            if outcome.delivered:
                log.info("batch %s: callback to %s delivered", self.id, shown)
                return
            log.warning(
                "batch %s: callback to %s: %s (%s)", self.id, shown, outcome.error, outcome.detail
            )
            if not outcome.retry:
                break
        await self.batches.set_fields(self.id, callback_error=outcome.error)

    @contextlib.asynccontextmanager
    async def _holding_arq_job(self) -> AsyncIterator[None]:
        """Keep arq's in-progress mark of this job alive on a short TTL instead of the job's
        whole timeout: if this process dies, another arq process runs the job again within
        `batch_heartbeat` rather than hours later."""
        if self._arq is None or self._arq_job_id is None:
            yield
            return
        key = in_progress_key_prefix + self._arq_job_id
        ttl_ms = int(self.settings.batch_heartbeat * 1000)

        async def beat() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await self._arq.pexpire(key, ttl_ms)  # type: ignore[union-attr]
                await asyncio.sleep(self.settings.batch_heartbeat / 3)

        task = asyncio.create_task(beat(), name=f"voxline-batch-heartbeat-{self.id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
