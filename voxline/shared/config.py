"""Settings shared by the front end and the workers; every one can be set as VOXLINE_<NAME>."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "voxline"
    # Protocol limits and timeouts (docs/protocol.md).
    config_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_message_bytes: int = 128 * 1024
    max_buffer_chars: int = 100_000
    # A session.config may carry a base64 ref_audio clip (vllm-omni allows 4 MiB).
    max_config_bytes: int = 4 * 1024 * 1024
    # Text one connection makes the server hold: the splitter's buffer plus sentences not yet
    # on the streams. Past it, text_too_large for that piece (memory a client can pin).
    max_pending_chars: int = 100_000
    max_sentence_chars: int = 300
    # Admission control: sessions one front-end process accepts at once.
    max_sessions: int = 1000
    # A sentence no worker has taken after this long fails (the pool is down or swamped).
    queue_timeout: float = 30.0
    # A started sentence whose worker says nothing for this long fails (the worker died).
    stall_timeout: float = 10.0
    # Each jobs stream is trimmed (approximately) to this many entries.
    stream_maxlen: int = 10_000
    # The jobs queue is split into this many shards (each a pair of streams on one cluster
    # slot). 1 on a single Redis; on a Cluster one or two per master spread the queue. Front
    # ends and workers must agree; workers may read more shards than the front ends write.
    job_shards: int = 1
    # A session's keys expire this long after its front end stopped renewing its lease.
    session_ttl: int = 60
    # Workers refresh their registry entry this often; one silent for worker_ttl is gone.
    heartbeat_interval: float = 2.0
    worker_ttl: float = 10.0
    # Crash recovery: a pending job idle this long belongs to a dead worker and is claimed by a
    # live one. Live workers refresh their in-flight jobs several times within it, and it stays
    # well under stall_timeout so a retry starts before the front end gives up on the sentence.
    claim_idle: float = 3.0
    # A job delivered this many times (its worker died each time) goes to the dead-letter stream.
    max_deliveries: int = 3
    # Worker SIGTERM: in-flight sentences get this long to finish before they are failed.
    drain_timeout: float = 30.0
    # API SIGTERM: sessions get this long to finish their current sentence before close 1012.
    shutdown_grace: float = 10.0
    # A session's lease, renewed by its front end; when it lapses (the front end died) the
    # workers drop the session's work.
    lease_ttl: float = 5.0
    # Fairness: sentences of one session queued or being synthesized at once.
    max_sentences_in_flight: int = 4
    # Admission control: a new session is refused while the jobs backlog exceeds this many
    # jobs per live worker slot.
    max_backlog_per_slot: float = 4.0
    # Length limits of one utterance (from its first text) and one connection.
    max_utterance_seconds: float = 600.0
    max_session_seconds: float = 3600.0
    # Auth (api/auth.py): comma-separated key hashes; empty = no auth.
    api_keys: str = ""
    # Comma-separated origins a browser WebSocket may come from; empty = any.
    allowed_origins: str = ""
    # Voice aliases merged over OpenAI's names (shared/voice_aliases.py): comma-separated
    # name=voice pairs, e.g. "alloy=en-us,Vivian=en"; empty = the built-in table only.
    voice_aliases: str = ""
    # Sessions one API key may hold open on one front-end process; 0 = no per-key limit.
    max_sessions_per_key: int = 0
    # Without API keys: sessions one client address may hold open on one front-end process,
    # so that one client cannot take every max_sessions slot; 0 = no per-client limit.
    max_sessions_per_client: int = 32
    # Comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For names the
    # client (for max_sessions_per_client); empty = the peer address is the client.
    trusted_proxies: str = ""
    # `voxline worker` serves its Prometheus metrics on this port (all interfaces); 0 = off.
    # Front ends serve theirs on GET /metrics.
    metrics_port: int = 0
    # Batch synthesis on arq (docs/batch.md). arq does not speak Redis Cluster: with a cluster
    # URL above, set arq_redis_url to a plain Redis; empty = redis_url.
    arq_redis_url: str = ""
    # Text one batch job may carry (characters).
    batch_max_chars: int = 1_000_000
    # Sentences of one batch job on the streams at once: a cancel has little to chase, and
    # one long job does not bury the queue.
    batch_window: int = 16
    # Share of a worker's slots batch sentences may hold; the rest stay free for real time.
    batch_share: float = 0.5
    # A finished file is kept this long (Redis, or batch_dir).
    batch_result_ttl: int = 86_400
    # Files up to this size live in Redis; larger ones go to batch_dir.
    batch_inline_max_bytes: int = 8 * 1024 * 1024
    # Where large results go (shared by the arq processes and the front ends); empty = none,
    # and a larger result fails the job, saying so.
    batch_dir: str = ""
    # A batch job may run this long before arq gives up on it.
    batch_timeout: float = 6 * 3600.0
    # A coordinator silent for this long (its arq process died) has its job run again.
    batch_heartbeat: float = 10.0
    # Comma-separated CIDRs a batch callback may reach although they are not public
    # (loopback, private, link-local…; batch/callbacks.py); empty = public addresses only.
    callback_allow: str = ""
    # Housekeeping: real-time stream entries older than this are trimmed (their sentences
    # failed on the front end's queue_timeout long ago).
    stream_max_age: float = 600.0
    # Housekeeping: dead letters and their report are kept this long.
    dead_letter_max_age: float = 7 * 86_400.0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then VOXLINE_* environment variables, then explicit overrides."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(f"VOXLINE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _coerce(f: dataclasses.Field[object], raw: str) -> object:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}.get(str(f.type))
    try:
        return kind(raw) if kind in (int, float) else raw
    except ValueError as exc:
        raise ValueError(f"VOXLINE_{f.name.upper()}={raw!r}: {exc}") from None
