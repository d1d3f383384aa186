from __future__ import annotations

import pytest

from voxline.shared.config import Settings


def test_environment_then_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_IDLE_TIMEOUT", "7.5")
    monkeypatch.setenv("VOXLINE_MAX_SESSIONS", "3")
    monkeypatch.setenv("VOXLINE_KEY_PREFIX", "envprefix")
    settings = Settings.from_env(key_prefix="explicit", redis_url=None)
    assert settings.idle_timeout == 7.5
    assert settings.max_sessions == 3
    assert settings.key_prefix == "explicit"
    assert settings.redis_url == Settings().redis_url


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_MAX_SESSIONS", "many")
    with pytest.raises(ValueError, match="VOXLINE_MAX_SESSIONS"):
        Settings.from_env()
