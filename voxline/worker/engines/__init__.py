"""Engines by name. Modules are imported only when chosen, so a worker loads only its own
engine's dependencies.

An engine is found, in this order: among voxline's own (`ENGINES`); among the installed
packages' entry points in the `voxline.engines` group (a third party's package declares
`[project.entry-points."voxline.engines"] my-tts = "my_pkg.engine:MyEngine"`); or as
`module:Class` named directly (`--engine my_pkg.engine:MyEngine`). Either way the class must
be an `Engine`; its options are the fields of its `Options` model (engines/options.py), each
given as `--engine-opt NAME=VALUE` or else read from VOXLINE_ENGINE_<NAME>."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points

from pydantic import BaseModel

from voxline.worker.engines.base import Engine
from voxline.worker.engines.options import parse_options

ENTRY_POINT_GROUP = "voxline.engines"

ENGINES: dict[str, str] = {
    "espeak": "voxline.worker.engines.espeak:EspeakEngine",
    "tone": "voxline.worker.engines.tone:ToneEngine",
    "vits": "voxline.worker.engines.vits:VitsEngine",
    "pocket-tts": "voxline.worker.engines.pocket.engine:PocketTTSEngine",
    "kokoro": "voxline.worker.engines.kokoro.engine:KokoroEngine",
    "upstream": "voxline.worker.engines.upstream.engine:UpstreamEngine",
}


def load_engine(name: str, options: Mapping[str, object] | None = None) -> Engine:
    """Instantiate the engine `name` with its `--engine-opt` options (strings, or typed
    values), the ones not given read from VOXLINE_ENGINE_<OPTION> (engines/options.py).

    Raises ValueError for an unknown engine or option, listing the valid ones, and for a
    value the engine's `Options` model refuses, saying what it allows.
    """
    cls = engine_class(name)
    if getattr(cls, "OPTIONS", None):
        # The old declaration (a dict of string parsers): refused, not silently ignored.
        raise ValueError(
            f"engine {name!r} declares OPTIONS parsers, which voxline no longer reads; declare "
            "a pydantic model as `Options` instead (voxline/worker/engines/options.py)"
        )
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, BaseModel)):
        raise ValueError(f"engine {name!r}: its Options is not a pydantic model")
    parsed = parse_options(name, cls.Options, options or {})
    try:
        return cls.from_options(parsed)
    except ValueError as exc:  # what only the engine can check (a CUDA device, say)
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
