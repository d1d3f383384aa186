"""A tiny random VITS checkpoint laid out as an MMS-TTS one (VitsModel + VitsTokenizer), built
locally so the vits engine's real loading path runs without the hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# MMS-style character vocabulary: id 0 is the blank the tokenizer puts between characters and
# also the pad token (mms-tts-eng uses "k" for both; any character works).
CHARACTERS = "_ '-abcdefghijklmnopqrstuvwxyz"
SAMPLING_RATE = 16000
HOP = 64  # samples per spectrogram frame: the product of the upsample rates


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """VitsConfig arguments for a model of some 40,000 parameters (milliseconds on a CPU)."""
    config: dict[str, Any] = {
        "vocab_size": len(CHARACTERS),
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "window_size": 2,
        "ffn_dim": 32,
        "flow_size": 8,
        "spectrogram_bins": 9,
        "upsample_initial_channel": 16,
        "upsample_rates": [8, 8],
        "upsample_kernel_sizes": [16, 16],
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3]],
        "depth_separable_num_layers": 2,
        "duration_predictor_filter_channels": 16,
        "duration_predictor_num_flows": 2,
        "prior_encoder_num_flows": 2,
        "prior_encoder_num_wavenet_layers": 2,
        "posterior_encoder_num_wavenet_layers": 1,
        "sampling_rate": SAMPLING_RATE,
        "pad_token_id": 0,
    }
    config.update(overrides)
    return config


def build_checkpoint(
    directory: Path,
    *,
    seed: int = 0,
    language: str | None = "eng",
    is_uroman: bool = False,
    **config_overrides: Any,
) -> Path:
    """Write config, weights and tokenizer files of a random VITS model into `directory`."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = VitsModel(VitsConfig(**tiny_config(**config_overrides)))
    model.save_pretrained(directory)
    vocab = directory / "vocab.json"
    vocab.write_text(json.dumps({c: i for i, c in enumerate(CHARACTERS)}))
    tokenizer = VitsTokenizer(
        str(vocab),
        pad_token=CHARACTERS[0],
        language=language,
        add_blank=True,
        normalize=True,
        phonemize=False,
        is_uroman=is_uroman,
    )
    tokenizer.save_pretrained(directory)
    return directory
