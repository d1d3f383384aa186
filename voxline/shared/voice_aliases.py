"""OpenAI's voice names as aliases of each engine's voices, so that a client written for
OpenAI (`voice="alloy"`) is served by any engine.

Each engine has a table of its own (below); a name its table leaves out gets the engine's
documented default, and an engine without a table maps every name to its own default voice:

======= ============== ========= ========= ==========
OpenAI  espeak         tone      vits      pocket-tts
======= ============== ========= ========= ==========
alloy   en-us          tone-mid  (default) alba
ash     en-us          tone-low  (default) marius
ballad  en-gb-x-rp     tone-low  (default) jean
coral   en-us          tone-high (default) cosette
echo    en             tone-low  (default) javert
fable   en-gb-x-rp     tone-mid  (default) jean
nova    en-us          tone-high (default) fantine
onyx    en-gb-scotland tone-low  (default) javert
sage    en             tone-high (default) eponine
shimmer en-us-nyc      tone-high (default) azelma
verse   en-029         tone-low  (default) marius
marin   en-us          tone-high (default) fantine
cedar   en             tone-low  (default) marius
======= ============== ========= ========= ==========

kokoro: ``jf_gongitsune`` for coral, nova, shimmer and marin, ``jm_kumo`` for the others.

Defaults: espeak ``en-us``, tone ``tone-mid``, pocket-tts ``alba``, kokoro ``jm_kumo``;
vits (and any other engine) its own default voice (a single-speaker model's only voice,
else ``speaker-0``).

The setting ``voice_aliases`` (``VOXLINE_VOICE_ALIASES``), e.g. ``alloy=en-us,Vivian=en``,
is merged over the table: it re-points an OpenAI name or adds a name of its own. An alias
whose voice the running engine lacks is dropped (the front end logs it once), and so is one
that is itself a voice name: the engine's own voices always win.
"""

from __future__ import annotations

import re

from voxline.shared.capabilities import EngineInfo

# OpenAI's voices (https://platform.openai.com/docs/guides/text-to-speech), in its order.
OPENAI_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)

# An OpenAI name the engine's table leaves out maps to this voice (absent: the engine's own).
DEFAULTS: dict[str, str] = {
    "espeak": "en-us",
    "tone": "tone-mid",
    "pocket-tts": "alba",
    "kokoro": "jm_kumo",
}

TABLE: dict[str, dict[str, str]] = {
    # espeak-ng's English voices: "en" is British, en-gb-x-rp Received Pronunciation.
    "espeak": {
        "ballad": "en-gb-x-rp",
        "echo": "en",
        "fable": "en-gb-x-rp",
        "onyx": "en-gb-scotland",
        "sage": "en",
        "shimmer": "en-us-nyc",
        "verse": "en-029",
        "cedar": "en",
    },
    # By pitch: OpenAI's lower voices low, its brighter ones high, the neutral ones mid.
    "tone": {
        "ash": "tone-low",
        "ballad": "tone-low",
        "coral": "tone-high",
        "echo": "tone-low",
        "nova": "tone-high",
        "onyx": "tone-low",
        "sage": "tone-high",
        "shimmer": "tone-high",
        "verse": "tone-low",
        "marin": "tone-high",
        "cedar": "tone-low",
    },
    # The PyPI voice tables: OpenAI's brighter voices the female voice the recognizer
    # understands best (jf_gongitsune), the rest jm_kumo, the best of all (bench/voices.py).
    # Another voices file drops what it lacks.
    "kokoro": {
        "coral": "jf_gongitsune",
        "nova": "jf_gongitsune",
        "shimmer": "jf_gongitsune",
        "marin": "jf_gongitsune",
    },
    # Kyutai's shipped pocket-tts voices; a checkpoint without some of them drops those.
    "pocket-tts": {
        "ash": "marius",
        "ballad": "jean",
        "coral": "cosette",
        "echo": "javert",
        "fable": "jean",
        "nova": "fantine",
        "onyx": "javert",
        "sage": "eponine",
        "shimmer": "azelma",
        "verse": "marius",
        "marin": "fantine",
        "cedar": "marius",
    },
}

_NAME = re.compile(r"[^\s=,]+")


def parse_overrides(text: str) -> dict[str, str]:
    """The setting's ``name=voice,name=voice`` pairs; ValueError saying what is wrong."""
    overrides: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, voice = (part.strip() for part in item.partition("="))
        if not sep or not _NAME.fullmatch(name) or not _NAME.fullmatch(voice):
            raise ValueError(
                f"VOXLINE_VOICE_ALIASES: {item.strip()!r} is not name=voice "
                "(comma-separated pairs, e.g. alloy=en-us,Vivian=en)"
            )
        if name in overrides and overrides[name] != voice:
            raise ValueError(
                f"VOXLINE_VOICE_ALIASES: {name!r} is given twice ({overrides[name]!r}, {voice!r})"
            )
        overrides[name] = voice
    return overrides


def table_for(engine: str, default_voice: str) -> dict[str, str]:
    """Every OpenAI name -> this engine's voice for it (before the setting's overrides)."""
    default = DEFAULTS.get(engine, default_voice)
    own = TABLE.get(engine, {})
    return {name: own.get(name, default) for name in OPENAI_VOICES}


def aliases_for(
    info: EngineInfo, overrides: dict[str, str]
) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """The aliases `info`'s engine can serve, and a line for each one dropped (why)."""
    wanted = {**table_for(info.name, info.default_voice), **overrides}
    voices = set(info.voices)
    kept: list[tuple[str, str]] = []
    dropped: list[str] = []
    for alias, voice in wanted.items():
        if alias in voices:
            if alias != voice:
                dropped.append(f"{alias}={voice}: {alias!r} is a voice of engine {info.name}")
        elif voice not in voices:
            dropped.append(f"{alias}={voice}: engine {info.name} has no voice {voice!r}")
        else:
            kept.append((alias, voice))
    return tuple(kept), dropped
