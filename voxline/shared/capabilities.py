"""What an engine can do, as workers advertise it and the front end validates against it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

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
    # Other names for voices, (alias, voice): OpenAI's voice names and the operator's own
    # (shared/voice_aliases.py). Filled in by the front end, not by the workers.
    aliases: tuple[tuple[str, str], ...] = ()
    # The languages each voice speaks itself, (voice, languages); a voice not listed speaks
    # `languages` (the engine's). Only for listing: `languages` is what a request may ask.
    voice_languages: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def resolve_voice(self, name: str) -> str | None:
        """The engine's voice for `name`: a voice of its own, else the voice an alias names
        (exact, then case-insensitive); None when it is neither."""
        if name in self.voices:
            return name
        folded = name.casefold()
        for exact in (True, False):
            for alias, voice in self.aliases:
                if alias == name if exact else alias.casefold() == folded:
                    return voice
        return None

    def languages_of(self, voice: str) -> tuple[str, ...]:
        """The languages `voice` speaks itself (the engine's when it lists none per voice)."""
        for name, languages in self.voice_languages:
            if name == voice:
                return languages
        return self.languages

    def pack(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def unpack(cls, data: bytes) -> EngineInfo:
        """The info `pack` wrote, also from an older or newer worker: a field it lacks takes
        its default, one this version does not know is dropped."""
        raw = msgpack.unpackb(data)
        known = {f.name for f in fields(cls)}
        raw = {key: value for key, value in raw.items() if key in known}
        for key in ("voices", "languages", "speed_range", "task_types", "extra_fields"):
            if key in raw:
                raw[key] = tuple(raw[key])
        if "aliases" in raw:
            raw["aliases"] = tuple((str(a), str(v)) for a, v in raw["aliases"])
        if "voice_languages" in raw:
            raw["voice_languages"] = tuple(
                (str(voice), tuple(langs)) for voice, langs in raw["voice_languages"]
            )
        return cls(**raw)
