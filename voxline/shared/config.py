"""Settings shared by the front end and the workers; every one can be set as VOXLINE_<NAME>
(case-insensitive), read by `Settings.from_env()`. Each field's limits are declared with it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from voxline.shared.defaults import DEFAULT_REDIS_URL

ENV_PREFIX = "VOXLINE_"


class Settings(BaseSettings):
    """`Settings(...)` is the defaults and what it is given, nothing else (tests and embedders
    stay hermetic); `Settings.from_env()` adds the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "voxline"
    # Protocol limits and timeouts (docs/protocol.md).
    config_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(120.0, gt=0)
    max_message_bytes: int = Field(128 * 1024, ge=1)
    max_buffer_chars: int = Field(100_000, ge=1)
    # A session.config may carry a base64 ref_audio clip (vllm-omni allows 4 MiB).
    max_config_bytes: int = Field(4 * 1024 * 1024, ge=1)
    # Text one connection makes the server hold: the splitter's buffer plus sentences not yet
    # on the streams. Past it, text_too_large for that piece (memory a client can pin).
    max_pending_chars: int = Field(100_000, ge=1)
    max_sentence_chars: int = Field(300, ge=1)
    # Admission control: sessions one front-end process accepts at once.
    max_sessions: int = Field(1000, ge=1)
    # A sentence no worker has taken after this long fails (the pool is down or swamped).
    queue_timeout: float = Field(30.0, gt=0)
    # A started sentence whose worker says nothing for this long fails (the worker died).
    stall_timeout: float = Field(10.0, gt=0)
    # Each jobs stream is trimmed (approximately) to this many entries.
    stream_maxlen: int = Field(10_000, ge=1)
    # The jobs queue is split into this many shards (each a pair of streams on one cluster
    # slot). 1 on a single Redis; on a Cluster one or two per master spread the queue. Front
    # ends and workers must agree; workers may read more shards than the front ends write.
    job_shards: int = Field(1, ge=1)
    # A session's keys expire this long after its front end stopped renewing its lease.
    session_ttl: int = Field(60, ge=1)
    # Workers refresh their registry entry this often; one silent for worker_ttl is gone.
    heartbeat_interval: float = Field(2.0, gt=0)
    worker_ttl: float = Field(10.0, gt=0)
    # Crash recovery: a pending job idle this long belongs to a dead worker and is claimed by a
    # live one. Live workers refresh their in-flight jobs several times within it, and it stays
    # well under stall_timeout so a retry starts before the front end gives up on the sentence.
    claim_idle: float = Field(3.0, gt=0)
    # A job delivered this many times (its worker died each time) goes to the dead-letter stream.
    max_deliveries: int = Field(3, ge=1)
    # Worker SIGTERM: in-flight sentences get this long to finish before they are failed.
    drain_timeout: float = Field(30.0, ge=0)
    # API SIGTERM: sessions get this long to finish their current sentence before close 1012.
    shutdown_grace: float = Field(10.0, ge=0)
    # A session's lease, renewed by its front end; when it lapses (the front end died) the
    # workers drop the session's work.
    lease_ttl: float = Field(5.0, gt=0)
    # Fairness: sentences of one session queued or being synthesized at once.
    max_sentences_in_flight: int = Field(4, ge=1)
    # Admission control: a new session is refused while the jobs backlog exceeds this many
    # jobs per live worker slot.
    max_backlog_per_slot: float = Field(4.0, ge=0)
    # Length limits of one utterance (from its first text) and one connection.
    max_utterance_seconds: float = Field(600.0, gt=0)
    max_session_seconds: float = Field(3600.0, gt=0)
    # Auth (api/auth.py): comma-separated key hashes; empty = no auth.
    api_keys: str = ""
    # Comma-separated origins a browser WebSocket may come from; empty = any.
    allowed_origins: str = ""
    # Voice aliases merged over OpenAI's names (shared/voice_aliases.py): comma-separated
    # name=voice pairs, e.g. "alloy=en-us,Vivian=en"; empty = the built-in table only.
    voice_aliases: str = ""
    # Sessions one API key may hold open on one front-end process; 0 = no per-key limit.
    max_sessions_per_key: int = Field(0, ge=0)
    # Without API keys: sessions one client address may hold open on one front-end process,
    # so that one client cannot take every max_sessions slot; 0 = no per-client limit.
    max_sessions_per_client: int = Field(32, ge=0)
    # Comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For names the
    # client (for max_sessions_per_client); empty = the peer address is the client.
    trusted_proxies: str = ""
    # `voxline worker` serves its Prometheus metrics on this port (all interfaces); 0 = off.
    # Front ends serve theirs on GET /metrics.
    metrics_port: int = Field(0, ge=0, le=65535)
    # Batch synthesis on arq (docs/batch.md). arq does not speak Redis Cluster: with a cluster
    # URL above, set arq_redis_url to a plain Redis; empty = redis_url.
    arq_redis_url: str = ""
    # Text one batch job may carry (characters).
    batch_max_chars: int = Field(1_000_000, ge=1)
    # Sentences of one batch job on the streams at once: a cancel has little to chase, and
    # one long job does not bury the queue.
    batch_window: int = Field(16, ge=1)
    # Share of a worker's slots batch sentences may hold; the rest stay free for real time.
    batch_share: float = Field(0.5, ge=0, le=1)
    # A finished file is kept this long (Redis, or batch_dir).
    batch_result_ttl: int = Field(86_400, ge=1)
    # Files up to this size live in Redis; larger ones go to batch_dir.
    batch_inline_max_bytes: int = Field(8 * 1024 * 1024, ge=0)
    # Where large results go (shared by the arq processes and the front ends); empty = none,
    # and a larger result fails the job, saying so.
    batch_dir: str = ""
    # A batch job may run this long before arq gives up on it.
    batch_timeout: float = Field(6 * 3600.0, gt=0)
    # A coordinator silent for this long (its arq process died) has its job run again.
    batch_heartbeat: float = Field(10.0, gt=0)
    # Comma-separated CIDRs a batch callback may reach although they are not public
    # (loopback, private, link-local…; batch/callbacks.py); empty = public addresses only.
    callback_allow: str = ""
    # Housekeeping: real-time stream entries older than this are trimmed (their sentences
    # failed on the front end's queue_timeout long ago).
    stream_max_age: float = Field(600.0, gt=0)
    # Housekeeping: dead letters and their report are kept this long.
    dead_letter_max_age: float = Field(7 * 86_400.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the constructor is given: from_env() reads the environment itself, so
        # that it knows which values came from there and can name their variables.
        return (init_settings,)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then VOXLINE_* environment variables, then explicit overrides (None: not
        given). A bad value is one ValueError naming its variable (or override)."""
        environ: dict[str, Any] = EnvSettingsSource(cls)()
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**{**environ, **given})
        except ValidationError as exc:
            raise ValueError(_explain(exc, set(given))) from None

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a field: `idle_timeout` -> VOXLINE_IDLE_TIMEOUT."""
        return f"{ENV_PREFIX}{field.upper()}"

    def replace(self, **changes: object) -> Settings:
        """A copy with `changes`, validated like any other Settings."""
        return type(self)(**{**self.model_dump(), **changes})


def _explain(exc: ValidationError, given: set[str]) -> str:
    """`VOXLINE_MAX_SESSIONS='many': Input should be a valid integer, ...`, one per bad value."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = field if field in given else Settings.env_name(field)
        problems.append(f"{name}={error['input']!r}: {error['msg']}")
    return "; ".join(problems)
