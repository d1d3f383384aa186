"""Engines by name. Modules are imported only when chosen, so a worker loads only its own
engine's dependencies.

An engine is found, in this order: among voxline's own (`ENGINES`); among the installed
packages' entry points in the `voxline.engines` group (a third party's package declares
`[project.entry-points."voxline.engines"] my-tts = "my_pkg.engine:MyEngine"`); or as
`module:Class` named directly (`--engine my_pkg.engine:MyEngine`). Either way the class must
be an `Engine`."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from voxline.worker.engines.base import Engine

ENTRY_POINT_GROUP = "voxline.engines"

ENGINES: dict[str, str] = {
    "espeak": "voxline.worker.engines.espeak:EspeakEngine",
    "tone": "voxline.worker.engines.tone:ToneEngine",
    "vits": "voxline.worker.engines.vits:VitsEngine",
    "pocket-tts": "voxline.worker.engines.pocket.engine:PocketTTSEngine",
    "kokoro": "voxline.worker.engines.kokoro.engine:KokoroEngine",
    "upstream": "voxline.worker.engines.upstream.engine:UpstreamEngine",
}


def load_engine(name: str, options: dict[str, str] | None = None) -> Engine:
    """Instantiate the engine `name` with its `--engine-opt` options (strings).

    Raises ValueError for an unknown engine or option, listing the valid ones.
    """
    cls = engine_class(name)
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


def installed() -> dict[str, str]:
    """Engines other packages declare in the `voxline.engines` entry-point group."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def engine_class(name: str) -> type[Engine]:
    """The Engine class `name` stands for: a built-in, an installed entry point, or
    `module:Class`. ValueError, naming what there is, when none."""
    target = ENGINES.get(name) or installed().get(name)
    if target is None and ":" not in name:
        known = sorted({*ENGINES, *installed()})
        raise ValueError(
            f"unknown engine {name!r}; choose one of {known}, or name a class as module:Class"
        )
    module_name, _, class_name = (target or name).partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        # A missing optional dependency of a built-in surfaces as itself, not as "no engine".
        if target in ENGINES.values():
            raise
        raise ValueError(f"engine {name!r}: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise ValueError(f"engine {name!r}: {module_name!r} has no {class_name!r}") from None
    if not (isinstance(found, type) and issubclass(found, Engine)):
        raise ValueError(f"engine {name!r}: {target or name} is not an Engine")
    return found
