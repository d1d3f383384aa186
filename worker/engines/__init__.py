"""Engines by name. Modules are imported only when chosen, so a worker loads only its own
engine's dependencies."""

from __future__ import annotations

import importlib

from worker.engines.base import Engine

ENGINES: dict[str, str] = {
    "espeak": "worker.engines.espeak:EspeakEngine",
    "tone": "worker.engines.tone:ToneEngine",
    "vits": "worker.engines.vits:VitsEngine",
    "pocket-tts": "worker.engines.pocket.engine:PocketTTSEngine",
    "kokoro": "worker.engines.kokoro.engine:KokoroEngine",
    "upstream": "worker.engines.upstream.engine:UpstreamEngine",
}


def load_engine(name: str, options: dict[str, str] | None = None) -> Engine:
    """Instantiate the engine `name` with its `--engine-opt` options (strings).

    Raises ValueError for an unknown engine or option, listing the valid ones.
    """
    target = ENGINES.get(name)
    if target is None:
        raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    module_name, _, class_name = target.partition(":")
    cls: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    kwargs = {}
    for key, raw in (options or {}).items():
        parse = cls.OPTIONS.get(key)
        if parse is None:
            valid = ", ".join(sorted(cls.OPTIONS)) or "none"
            raise ValueError(f"engine {name!r} has no option {key!r}; valid options: {valid}")
        try:
            kwargs[key] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"engine {name!r} option {key}={raw!r}: {exc}") from None
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ValueError(f"engine {name!r}: {exc}") from None
