"""Every Redis key, stream and channel name voxline uses, in one place.

Per-session names carry the session id in a `{...}` hash tag so that all of one session's
keys land on the same slot of a Redis Cluster. The jobs queue is split into shards, each two
streams sharing a hash tag of their own, so that a cluster spreads the queue over its masters;
the other global names (cancel channel, worker registry, dead letters) are single keys.
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

    @property
    def streams(self) -> tuple[str, str]:
        """Both streams, in the order workers serve them."""
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
        return JobShard(index, f"{rest}:first", rest)

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


def cancel_tokens(utterance: int, sentence: int) -> list[str]:
    """The tokens any one of which cancels sentence `sentence` of utterance `utterance`."""
    return [SESSION_CANCELLED, utterance_token(utterance), sentence_token(utterance, sentence)]


SESSION_CANCELLED = "*"


def utterance_token(utterance: int) -> str:
    return f"u{utterance}"


def sentence_token(utterance: int, sentence: int) -> str:
    return f"u{utterance}:s{sentence}"
