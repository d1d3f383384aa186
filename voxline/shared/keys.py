"""Every Redis key, stream and channel name voxline uses, in one place.

Per-session names carry the session id in a `{...}` hash tag so that all of one session's
keys land on the same slot of a Redis Cluster; so do a batch job's (`{batch-<id>}`). The jobs
queue is split into shards, each three streams sharing a hash tag of their own, so that a
cluster spreads the queue over its masters; the other global names (cancel channel, worker
registry, dead letters, housekeeping) are single keys. arq's own keys are arq's: it names them
itself, under `arq:` (the queue name is ours).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

JOBS_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class JobShard:
    """One shard of the jobs queue: its two streams share a hash tag (one cluster slot), so a
    worker reads both in one XREADGROUP and can move a job between them in one transaction."""

    index: int
    first: str  # first sentences of utterances, served before `rest`
    rest: str
    batch: str = ""  # sentences of batch jobs (arq), served only when neither has any

    @property
    def streams(self) -> tuple[str, str]:
        """The real-time streams, in the order workers serve them."""
        return (self.first, self.rest)


@functools.cache
def shard_tag(index: int) -> str:
    """The hash tag of shard `index`. Shard k's slot is placed at the k-th point of a van der
    Corput sequence over the slot space (1/2, 1/4, 3/4, 1/8, ...), so the first N shards are
    spread over a cluster's masters for any N, and a shard's name does not depend on N (workers
    reading more shards than the front ends write still serve everything)."""
    point, denominator, k = 0.0, 1.0, index + 1
    while k:
        denominator *= 2
        k, bit = divmod(k, 2)
        point += bit / denominator
    target = int(point * REDIS_CLUSTER_HASH_SLOTS)
    for attempt in range(1_000_000):
        tag = f"jobs-{index}" if attempt == 0 else f"jobs-{index}.{attempt}"
        if 0 <= key_slot(tag.encode()) - target < 64:
            return tag
    raise AssertionError("unreachable: some tag hashes near every slot")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (tests use their own prefix to stay isolated)."""

    prefix: str = "voxline"
    shards: int = 1  # jobs-queue shards (`job_shards`); every process must agree

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("job_shards must be at least 1")

    def job_shard(self, index: int) -> JobShard:
        """Shard `index` of the jobs queue. `first` holds the first sentence of each utterance:
        workers read it before `rest`, so a caller starting to speak never waits behind other
        sessions' later sentences."""
        rest = f"{self.prefix}:{{{shard_tag(index)}}}"
        return JobShard(index, f"{rest}:first", rest, f"{rest}:batch")

    @property
    def job_shards(self) -> tuple[JobShard, ...]:
        return tuple(self.job_shard(k) for k in range(self.shards))

    def shard_of(self, session_id: str) -> JobShard:
        """The shard of a session's jobs: one shard per session keeps its sentences in order."""
        return self.job_shard(zlib.crc32(session_id.encode()) % self.shards)

    @property
    def job_streams(self) -> tuple[str, ...]:
        """Every jobs stream, in the order workers serve them: every shard's `first` stream,
        then every shard's `rest`."""
        shards = self.job_shards
        return tuple(s.first for s in shards) + tuple(s.rest for s in shards)

    @property
    def batch_streams(self) -> tuple[str, ...]:
        """Every shard's stream of batch sentences (served after every real-time stream)."""
        return tuple(s.batch for s in self.job_shards)

    @property
    def worker_streams(self) -> tuple[str, ...]:
        """Every stream the workers' group reads, in the order they serve them: real-time
        first sentences, real-time, batch."""
        return self.job_streams + self.batch_streams

    @property
    def dead_letters(self) -> str:
        """Stream of jobs given up on after `max_deliveries` (their workers kept dying)."""
        return f"{self.prefix}:jobs:dead"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel on which the front end tells every worker about a cancel."""
        return f"{self.prefix}:cancel"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        """Hash: one worker's engine info and counters; expires unless heartbeated."""
        return f"{self.prefix}:worker:{worker_id}"

    def audio_channel(self, session_id: str) -> str:
        """Pub/sub channel carrying a session's audio back to the front end that owns it."""
        return f"{self.prefix}:{{{session_id}}}:audio"

    def lease(self, session_id: str) -> str:
        """String with a TTL, renewed by the front end holding the session: while it exists,
        someone is listening for the session's audio."""
        return f"{self.prefix}:{{{session_id}}}:lease"

    def cancelled(self, session_id: str) -> str:
        """Set of cancel tokens for a session: `*`, `u<utt>` or `u<utt>:s<sentence>`."""
        return f"{self.prefix}:{{{session_id}}}:cancelled"

    # Batch synthesis (batch/, api/batch.py). A batch job's sentences run as the pseudo-session
    # `batch-<id>`, so the cancel set and notices work for them as for a session.

    @property
    def arq_queue(self) -> str:
        """arq's queue (a sorted set) of batch jobs and housekeeping runs."""
        return f"{self.prefix}:arq:queue"

    def batch(self, batch_id: str) -> str:
        """Hash: a batch job's request and status (status, total, done, format, rate, ...)."""
        return f"{self.prefix}:{{{batch_session(batch_id)}}}:batch"

    def batch_sentences(self, batch_id: str) -> str:
        """List: the job's sentences, as the coordinator split them (once)."""
        return f"{self.prefix}:{{{batch_session(batch_id)}}}:sentences"

    def batch_queued(self, batch_id: str) -> str:
        """Hash: sentence index -> its entry id on the batch stream (queued, not yet done)."""
        return f"{self.prefix}:{{{batch_session(batch_id)}}}:queued"

    def batch_audio(self, batch_id: str) -> str:
        """Hash: sentence index -> its PCM (or `!<reason>` when it failed), set by workers."""
        return f"{self.prefix}:{{{batch_session(batch_id)}}}:audio"

    def batch_events(self, batch_id: str) -> str:
        """Stream: one entry per finished sentence or cancel: wakes the coordinator's XREAD."""
        return f"{self.prefix}:{{{batch_session(batch_id)}}}:events"

    def batch_result(self, batch_id: str) -> str:
        """String: the finished file, when small enough to live in Redis (TTL)."""
        return f"{self.prefix}:{{{batch_session(batch_id)}}}:result"

    # Housekeeping (batch/housekeeping.py).

    @property
    def dead_letter_report(self) -> str:
        """Hash: dead-letter entry id -> JSON of the job and why it was given up on."""
        return f"{self.prefix}:jobs:dead:report"

    @property
    def stats(self) -> str:
        """Hash: the queue statistics of the last housekeeping run (also published)."""
        return f"{self.prefix}:stats"

    @property
    def stats_channel(self) -> str:
        """Pub/sub channel on which every housekeeping run publishes the queue statistics."""
        return f"{self.prefix}:stats"


BATCH_SESSION_PREFIX = "batch-"


def batch_session(batch_id: str) -> str:
    """The pseudo-session id a batch job's sentences carry."""
    return f"{BATCH_SESSION_PREFIX}{batch_id}"


def cancel_tokens(utterance: int, sentence: int) -> list[str]:
    """The tokens any one of which cancels sentence `sentence` of utterance `utterance`."""
    return [SESSION_CANCELLED, utterance_token(utterance), sentence_token(utterance, sentence)]


SESSION_CANCELLED = "*"


def utterance_token(utterance: int) -> str:
    return f"u{utterance}"


def sentence_token(utterance: int, sentence: int) -> str:
    return f"u{utterance}:s{sentence}"
