"""What the deployment tests share: paths, and reading VOXLINE_* settings the way processes do."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from unittest import mock

from voxline.shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]

# Grace periods must exceed what the process itself waits for by this much at least: the
# hand-back after a drain, the last writes to Redis, process exit.
MIN_MARGIN_S = 5.0


def setting_env_names() -> set[str]:
    return {Settings.env_name(name) for name in Settings.model_fields}


def settings_from(env: Mapping[str, str]) -> Settings:
    """The Settings a process started with `env` gets (fails on a value it cannot parse)."""
    with mock.patch.dict(os.environ, dict(env), clear=True):
        return Settings.from_env()


def seconds(duration: str | int | float) -> float:
    """A Compose duration ("1m30s", "45s", "500ms") or a plain number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)
