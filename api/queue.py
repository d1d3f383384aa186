"""The front end's side of the jobs stream: enqueue sentences, cancel them."""

from __future__ import annotations

import redis.asyncio as aioredis

from shared.keys import SESSION_CANCELLED, Keys, sentence_token, utterance_token
from shared.wire import Cancel, Job


class JobQueue:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, maxlen: int, session_ttl: int) -> None:
        self._redis = redis
        self._keys = keys
        self._maxlen = maxlen
        self._ttl = session_ttl

    async def enqueue(self, *jobs: Job) -> None:
        """Queue jobs in order, in one round trip."""
        # Approximate trimming keeps XADD O(1); a backlog beyond maxlen loses its oldest
        # entries, which then fail on their queue deadline instead of hanging.
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                stream = self._keys.jobs_first if job.sentence == 0 else self._keys.jobs
                pipe.xadd(stream, {"j": job.pack()}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    async def backlog(self) -> int:
        """Jobs waiting or being synthesized (entries are deleted once acknowledged)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self._keys.job_streams:
                pipe.xlen(stream)
            return sum(await pipe.execute())

    async def cancel_sentences(self, session_id: str, sentences: list[tuple[int, int]]) -> None:
        """Cancel single sentences, given as (utterance, sentence) pairs, in one round trip."""
        if not sentences:
            return
        key = self._keys.cancelled(session_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, *(sentence_token(u, s) for u, s in sentences))
            pipe.expire(key, self._ttl)
            for u, s in sentences:
                pipe.publish(self._keys.cancel_channel, Cancel(session_id, u, s).pack())
            await pipe.execute()

    async def cancel(
        self, session_id: str, utterances: list[int] | None = None, sentence: int | None = None
    ) -> None:
        """Mark work cancelled (so no worker starts it) and tell workers (so in-flight stops).

        The mark comes first: a worker registers a job as in flight before it checks the
        mark, so every job either sees the mark or is in flight when the notice arrives.
        `utterances=None` cancels the whole session; `sentence` narrows one utterance.
        """
        key = self._keys.cancelled(session_id)
        if utterances is None:
            tokens = [SESSION_CANCELLED]
            notices = [Cancel(session_id)]
        elif sentence is not None:
            (utt,) = utterances
            tokens = [sentence_token(utt, sentence)]
            notices = [Cancel(session_id, utt, sentence)]
        else:
            tokens = [utterance_token(u) for u in utterances]
            notices = [Cancel(session_id, u) for u in utterances]
        if not tokens:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, *tokens)
            pipe.expire(key, self._ttl)
            for notice in notices:
                pipe.publish(self._keys.cancel_channel, notice.pack())
            await pipe.execute()
