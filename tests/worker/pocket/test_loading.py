"""Loading a checkpoint: the real from_pretrained path, device/dtype choice, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from voxline.worker.engines.pocket.loading import (
    DEFAULT_MODEL,
    ModelNotFound,
    codec_dtype,
    load,
    resolve_device,
    resolve_dtype,
)


def test_a_moved_checkpoint_still_finds_its_audio_tokenizer(
    pocket_dir: Path, tmp_path: Path
) -> None:
    moved = shutil.copytree(pocket_dir, tmp_path / "moved")
    loaded = load(str(moved), torch.device("cpu"), torch.float32)
    assert loaded.codec.name_or_path == str(moved / "audio_tokenizer")
    assert loaded.voices_dir == moved / "voices"
    assert loaded.processor.tokenizer.audio_prompt_token == "<|voice|>"


def test_an_absolute_audio_tokenizer_path_goes_through_auto_processor(
    pocket_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(pocket_dir, tmp_path / "absolute")
    config = copy / "processor_config.json"
    data = json.loads(config.read_text())
    data["audio_tokenizer"]["audio_tokenizer_name_or_path"] = str(copy / "audio_tokenizer")
    config.write_text(json.dumps(data))
    loaded = load(str(copy), torch.device("cpu"), torch.float32)
    assert loaded.codec is not None and loaded.codec.config.frame_size == 24


def test_missing_pieces_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="hf download"):
        load(str(tmp_path / "nothing-here"), torch.device("cpu"), torch.float32)


def test_device_and_dtype_choices() -> None:
    cpu = resolve_device("cpu")
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("auto", cpu) in (torch.float32, torch.bfloat16)
    assert codec_dtype(cpu, torch.bfloat16) is torch.float32  # the codec stays exact on CPU
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device("cuda")


def test_the_default_is_the_transformers_format_checkpoint() -> None:
    assert DEFAULT_MODEL == "eustlb/pocket-tts"  # what transformers' PocketTTS* docs name


@pytest.mark.parametrize("source", ["directory", "kyutai/pocket-tts"])
def test_a_native_checkpoint_is_refused_naming_a_transformers_one(
    source: str, tmp_path: Path
) -> None:
    # Kyutai's native layout: one weights file, a SentencePiece tokenizer, voice embeddings,
    # and no config.json.
    native = tmp_path / "pocket-native"
    (native / "embeddings").mkdir(parents=True)
    (native / "tts_b6369a24.safetensors").write_bytes(b"\0" * 16)
    (native / "tokenizer.model").write_bytes(b"\0" * 16)
    (native / "embeddings" / "alba.safetensors").write_bytes(b"\0" * 16)
    model_id = str(native) if source == "directory" else source
    expected = (
        f"native pocket-tts checkpoint at {model_id}; "
        "use a transformers-format one such as eustlb/pocket-tts"
    )
    with pytest.raises(ModelNotFound) as raised:
        load(model_id, torch.device("cpu"), torch.float32)
    assert str(raised.value) == expected
