"""Every Redis key, stream and channel name voxline uses, in one place.

Per-session names carry the session id in a `{...}` hash tag so that all of one session's
keys land on the same slot of a Redis Cluster; the global names (jobs stream, cancel
channel, worker registry) are single keys.
"""

from __future__ import annotations

from dataclasses import dataclass

JOBS_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (tests use their own prefix to stay isolated)."""

    prefix: str = "voxline"

    @property
    def jobs(self) -> str:
        """Stream of sentence jobs, read by the worker consumer group."""
        return f"{self.prefix}:jobs"

    @property
    def jobs_first(self) -> str:
        """Stream of the first sentence of each utterance: workers read it before `jobs`, so a
        caller starting to speak never waits behind other sessions' later sentences."""
        return f"{self.prefix}:jobs:first"

    @property
    def job_streams(self) -> tuple[str, str]:
        """Every jobs stream, in the order workers serve them."""
        return (self.jobs_first, self.jobs)

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
