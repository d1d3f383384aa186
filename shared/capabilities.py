"""What an engine can do, as workers advertise it and the front end validates against it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import msgpack


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """An engine's advertised capabilities.

    Workers publish this in their registry entry; the front end validates each
    `session.config` against it, so a value the pool cannot honour is refused up front
    instead of failing (or being ignored) per sentence.
    """

    name: str
    sample_rate: int
    voices: tuple[str, ...]
    default_voice: str
    languages: tuple[str, ...] = ()  # empty: only "Auto"
    word_timestamps: bool = False
    speed_range: tuple[float, float] = (0.25, 4.0)
    task_types: tuple[str, ...] = ("CustomVoice",)
    # Compatibility fields (vllm-omni's) this engine honours; any other one set is refused.
    extra_fields: tuple[str, ...] = field(default=())

    def pack(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def unpack(cls, data: bytes) -> EngineInfo:
        raw = msgpack.unpackb(data)
        for key in ("voices", "languages", "speed_range", "task_types", "extra_fields"):
            raw[key] = tuple(raw[key])
        return cls(**raw)
