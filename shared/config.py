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
    max_sentence_chars: int = 300
    # Admission control: sessions one front-end process accepts at once.
    max_sessions: int = 1000
    # A sentence no worker has taken after this long fails (the pool is down or swamped).
    queue_timeout: float = 30.0
    # A started sentence whose worker says nothing for this long fails (the worker died).
    stall_timeout: float = 10.0
    # Jobs stream is trimmed (approximately) to this many entries.
    stream_maxlen: int = 10_000
    # Per-session keys expire this long after their last write.
    session_ttl: int = 3600
    # Workers refresh their registry entry this often; one silent for worker_ttl is gone.
    heartbeat_interval: float = 2.0
    worker_ttl: float = 10.0

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
