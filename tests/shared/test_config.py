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


def test_limits_are_part_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_JOB_SHARDS", "0")
    with pytest.raises(ValueError, match=r"^VOXLINE_JOB_SHARDS='0': .*greater than or equal to 1$"):
        Settings.from_env()
    monkeypatch.delenv("VOXLINE_JOB_SHARDS")
    with pytest.raises(ValueError, match=r"^batch_share=1.5: .*less than or equal to 1$"):
        Settings.from_env(batch_share=1.5)  # an override is named as itself
    with pytest.raises(ValueError, match="stall_timeout"):
        Settings(stall_timeout=0)
    with pytest.raises(ValueError, match="max_sessions_per_client"):
        Settings().replace(max_sessions_per_client=-1)
    assert Settings(max_sessions_per_client=0, max_backlog_per_slot=0).max_sessions_per_client == 0


def test_the_constructor_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLINE_KEY_PREFIX", "envprefix")
    assert Settings().key_prefix == "voxline"
    assert Settings.from_env().key_prefix == "envprefix"
    assert Settings.env_name("key_prefix") == "VOXLINE_KEY_PREFIX"


def test_settings_are_frozen_values() -> None:
    settings = Settings(job_shards=2)
    assert settings == Settings(job_shards=2) and hash(settings) == hash(Settings(job_shards=2))
    assert settings.replace(job_shards=3).job_shards == 3 and settings.job_shards == 2
    with pytest.raises(ValueError):
        settings.job_shards = 3  # frozen
