"""Tiny random Pocket TTS checkpoints, written once per test session through the real
save_pretrained path and loaded through the engine's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxline.worker.engines.pocket.checkpoint import build_checkpoint


@pytest.fixture(scope="session")
def pocket_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ends every sentence soon after its minimum length (11 frames for a short text)."""
    return build_checkpoint(tmp_path_factory.mktemp("pocket"), size="tiny", eos_bias=-3.0)


@pytest.fixture(scope="session")
def pocket_eos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """End-of-speech logits around the threshold: sentences end after different counts."""
    return build_checkpoint(tmp_path_factory.mktemp("pocket-eos"), size="tiny", eos_bias=-4.0)


@pytest.fixture(scope="session")
def pocket_long_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Never ends on its own: sentences run to their frame budget."""
    return build_checkpoint(tmp_path_factory.mktemp("pocket-long"), size="tiny", eos_bias=-20.0)
