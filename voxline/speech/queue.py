"""The front end's side of the jobs queue: enqueue sentences, cancel them."""

from __future__ import annotations

from typing import Any

from voxline.shared.channels import broadcast, is_cluster
from voxline.shared.connections import Client
from voxline.shared.keys import SESSION_CANCELLED, Keys, sentence_token, utterance_token
from voxline.shared.wire import Cancel, Job
from voxline.speech.leases import Leases


class JobQueue:
    def __init__(
        self,
        redis: Client,
        keys: Keys,
        *,
        maxlen: int,
        session_ttl: int,
        leases: Leases | None = None,
    ) -> None:
        self._redis = redis
        self._leases = leases
        self._keys = keys
        self._maxlen = maxlen
        self._ttl = session_ttl

    async def enqueue(self, *jobs: Job) -> None:
        """Queue jobs in order, in one round trip. A session's jobs all go to its shard (one
        cluster slot), so their order holds on a Cluster too."""
        # Approximate trimming keeps XADD O(1); a backlog beyond maxlen loses its oldest
        # entries, which then fail on their queue deadline instead of hanging.
        async with self._redis.pipeline(transaction=False) as pipe:
            if self._leases is not None:
                # Before the jobs: a worker may read one before the pipeline's next command.
                for session_id in {job.session_id for job in jobs}:
                    self._leases.renew_in(pipe, session_id)
            for job in jobs:
                shard = self._keys.shard_of(job.session_id)
                stream = shard.first if job.sentence == 0 else shard.rest
                pipe.xadd(stream, {"j": job.pack()}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    async def backlog(self) -> int:
        """Jobs waiting or being synthesized (entries are deleted once acknowledged)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._keys.job_streams:
                pipe.xlen(stream)
            return sum(await pipe.execute())

    async def cancel_sentences(self, session_id: str, sentences: list[tuple[int, int]]) -> None:
        """Cancel single sentences, given as (utterance, sentence) pairs."""
        await self._mark_and_notify(
            session_id,
            [sentence_token(u, s) for u, s in sentences],
            [Cancel(session_id, u, s) for u, s in sentences],
        )

    async def cancel(
        self, session_id: str, utterances: list[int] | None = None, sentence: int | None = None
    ) -> None:
        """Mark work cancelled (so no worker starts it) and tell workers (so in-flight stops).

        `utterances=None` cancels the whole session; `sentence` narrows one utterance.
        """
        if utterances is None:
            tokens, notices = [SESSION_CANCELLED], [Cancel(session_id)]
        elif sentence is not None:
            (utt,) = utterances
            tokens, notices = [sentence_token(utt, sentence)], [Cancel(session_id, utt, sentence)]
        else:
            tokens = [utterance_token(u) for u in utterances]
            notices = [Cancel(session_id, u) for u in utterances]
        await self._mark_and_notify(session_id, tokens, notices)

    async def _mark_and_notify(
        self, session_id: str, tokens: list[str], notices: list[Cancel]
    ) -> None:
        """The mark comes first: a worker registers a job as in flight before it checks the
        mark, so every job either sees the mark or is in flight when the notice arrives."""
        if not tokens:
            return
        key = self._keys.cancelled(session_id)
        # One round trip on a single Redis, which runs a pipeline in order. A cluster pipeline
        # sends each node's share concurrently: there the notice waits for the mark.
        ordered = not is_cluster(self._redis)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, *tokens)
            pipe.expire(key, self._ttl)
            if ordered:
                self._notify_in(pipe, notices)
            await pipe.execute()
        if not ordered:
            async with self._redis.pipeline(transaction=False) as pipe:
                self._notify_in(pipe, notices)
                await pipe.execute()

    def _notify_in(self, pipe: Any, notices: list[Cancel]) -> None:
        for notice in notices:
            broadcast(pipe, self._keys.cancel_channel, notice.pack())
