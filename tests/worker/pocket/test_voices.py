"""Voices: shipped prompts, an unprompted default, clones; each prefix prepared once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from voxline.worker.engines.base import EngineError
from voxline.worker.engines.pocket.backbone import Backbone
from voxline.worker.engines.pocket.checkpoint import build_checkpoint
from voxline.worker.engines.pocket.loading import load
from voxline.worker.engines.pocket.voices import DEFAULT_VOICE, Voices, decode_ref_audio


def voices_of(directory: Path) -> Voices:
    loaded = load(str(directory), torch.device("cpu"), torch.float32)
    return Voices(Backbone(loaded.model, slots=2), loaded.processor, loaded.voices_dir)


def test_a_voice_prefix_is_computed_once_and_shared(pocket_dir: Path) -> None:
    voices = voices_of(pocket_dir)
    first = voices.prompt("Hello world.", "alba", None, None)
    second = voices.prompt("Another sentence entirely.", "alba", None, None)
    assert first.prefix is second.prefix
    assert first.prefix.length == 1 + 6  # the voice's BOS and its six frames
    assert voices.prompt("Hello world.", "marius", None, None).prefix is not first.prefix
    # The text part ends with the first audio position, where generation starts.
    assert int(first.text_ids[-1]) == voices.backbone.config.audio_bos_token_id


def test_a_checkpoint_without_voices_speaks_unprompted(tmp_path: Path) -> None:
    voices = voices_of(build_checkpoint(tmp_path / "bare", voices=()))
    assert voices.names == (DEFAULT_VOICE,)
    prompt = voices.prompt("Hello world.", DEFAULT_VOICE, None, None)
    assert prompt.prefix.length == 0
    with pytest.raises(EngineError, match="unknown voice 'alba'"):
        voices.prompt("Hello.", "alba", None, None)


def test_budget_follows_the_text_unless_capped(pocket_dir: Path) -> None:
    voices = voices_of(pocket_dir)
    short = voices.prompt("Hi.", "alba", None, None).max_frames
    long = voices.prompt("A much longer sentence with many more words in it.", "alba", None, None)
    assert long.max_frames > short
    assert voices.prompt("Hi.", "alba", None, 5).max_frames == 5


@pytest.mark.parametrize(
    ("ref_audio", "message"),
    [
        ("%%%", "base64"),
        ("data:audio/wav;base64,AAAA", "RIFF"),
        ("UklGRgAAAABXQVZF", "fmt"),
    ],
)
def test_bad_reference_clips_are_refused(ref_audio: str, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        decode_ref_audio(ref_audio)
