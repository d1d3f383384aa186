"""Where neural engines' models come from: offline mode and the one missing-model error."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxline.worker.engines.checkpoints import (
    available_cpus,
    looks_like_path,
    missing_model,
    offline,
)


def test_paths_and_hub_ids_are_told_apart() -> None:
    assert looks_like_path("/models/x") and looks_like_path("./x") and looks_like_path("a/b/c")
    assert not looks_like_path("kyutai/pocket-tts") and not looks_like_path("name")


def test_offline_follows_the_hub_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert offline()


def test_the_missing_model_error_names_it_and_the_way_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = str(missing_model("pocket-tts", "Pocket TTS", "owner/model", "d/default", OSError("x")))
    assert "'owner/model' not found locally and the hub is off" in hub
    assert "hf download owner/model --local-dir DIR" in hub and "--model DIR" in hub
    assert hub.endswith("(OSError: x)")
    empty = str(missing_model("vits", "VITS", str(tmp_path), "d/default"))
    assert "holds no loadable VITS checkpoint" in empty and "hf download d/default" in empty
    gone = str(missing_model("vits", "VITS", str(tmp_path / "gone"), "d/default"))
    assert "does not exist" in gone


def test_available_cpus_is_positive() -> None:
    assert available_cpus() >= 1
