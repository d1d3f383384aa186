"""Pocket TTS checkpoints with random weights, written in the layout `loading.py` reads: for
tests (tiny) and benchmarks (real size) on machines that cannot reach a model hub.

Layout of a checkpoint directory:
    config.json, model.safetensors, generation_config.json   the backbone + flow head
    tokenizer.json, tokenizer_config.json, chat_template.jinja, processor_config.json
    audio_tokenizer/                                         the codec (encoder + decoder)
    voices/<name>.safetensors                                shipped voices: "audio_prompt_latents"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PocketTTSAudioTokenizerConfig,
    PocketTTSAudioTokenizerModel,
    PocketTTSConfig,
    PocketTTSFeatureExtractor,
    PocketTTSForConditionalGeneration,
    PocketTTSProcessor,
    PreTrainedTokenizerFast,
)

AUDIO_TOKENS = {
    "audio_prompt_bos_token": "<|voice_bos|>",
    "audio_prompt_token": "<|voice|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_latent_token": "<|latent|>",
}
# The voice first, then the text, then the first audio position: the voice prefix is the same
# for every sentence, so its keys and values are computed once per voice.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'audio' -%}<|voice_bos|><|voice|>"
    "{%- elif content['type'] == 'text' -%}{{ content['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endfor -%}<|audio_bos|>"
)
_CORPUS = (
    "Hello world. This is a test of the speech model, with numbers like 3.14 and 42! "
    "Is it working? Yes, it is... The quick brown fox jumps over the lazy dog; "
    "she sells sea shells by the sea shore. Good morning, how can I help you today?"
)
_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"-() ")


class Size(TypedDict):
    """The shapes of one checkpoint size (an entry of SIZES)."""

    vocab: int
    backbone: dict[str, Any]  # PocketTTSConfig's keyword arguments
    flow: dict[str, Any]  # its flow head's
    latent_dim: int
    codec: dict[str, Any]  # PocketTTSAudioTokenizerConfig's
    voice_frames: int


SIZES: dict[str, Size] = {
    # Small enough for tests to run in milliseconds; every code path of the real one.
    "tiny": {
        "vocab": 160,
        "backbone": dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        ),
        "flow": dict(hidden_size=32, num_hidden_layers=2, frequency_embedding_size=16),
        "latent_dim": 8,
        "codec": dict(
            hidden_size=16,
            num_filters=4,
            upsampling_ratios=[4, 3],
            latent_stride=2,
            num_hidden_layers=1,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=2,
            sliding_window=8,
            upsample_groups=16,
        ),
        "voice_frames": 6,
    },
    # The released model's shapes (transformers' defaults): 89 M backbone + flow head,
    # 20 M codec decoder, 1920 samples (80 ms) per frame.
    "full": {
        "vocab": 4000,
        "backbone": {},
        "flow": {},
        "latent_dim": 32,
        "codec": dict(upsampling_ratios=[6, 5, 4]),
        "voice_frames": 125,
    },
}


def _tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=AUDIO_TOKENS,
    )


def build_checkpoint(
    directory: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    voices: tuple[str, ...] = ("alba", "marius"),
    eos_bias: float | None = None,
    do_sample: bool = True,
    temperature: float = 0.7,
) -> Path:
    """Write a random-weight checkpoint to `directory` and return it.

    `eos_bias` sets the end-of-speech head's bias (random weights rarely cross the threshold;
    a high bias ends every sentence at `min_frames_before_eos`, a low one runs to the budget).
    """
    spec = SIZES[size]
    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = _tokenizer(spec["vocab"])
    ids: dict[str, Any] = {  # PocketTTSConfig's keyword arguments
        name.removesuffix("_token") + "_token_id": tokenizer.convert_tokens_to_ids(token)
        for name, token in AUDIO_TOKENS.items()
    }
    latent_dim = spec["latent_dim"]
    backbone = dict(spec["backbone"])
    config = PocketTTSConfig(
        vocab_size=len(tokenizer),
        latent_dim=latent_dim,
        pad_token_id=tokenizer.pad_token_id,
        flow_head_config=dict(
            spec["flow"],
            latent_dim=latent_dim,
            condition_dim=backbone.get("hidden_size", PocketTTSConfig().hidden_size),
        ),
        **backbone,
        **ids,
    )
    model = PocketTTSForConditionalGeneration(config).eval()
    with torch.no_grad():
        if eos_bias is not None:
            model.eos_head.bias.fill_(eos_bias)
    model.generation_config.do_sample = do_sample
    model.generation_config.temperature = temperature
    model.save_pretrained(directory)

    codec_config = PocketTTSAudioTokenizerConfig(latent_dim=latent_dim, **spec["codec"])
    codec = PocketTTSAudioTokenizerModel(codec_config).eval()
    codec.save_pretrained(directory / "audio_tokenizer")

    frame_size = codec_config.frame_size
    features = PocketTTSFeatureExtractor(frame_size=frame_size, pad_to_multiple_of=frame_size)
    processor = PocketTTSProcessor(
        feature_extractor=features,
        tokenizer=tokenizer,
        audio_tokenizer=codec,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(directory)
    # Relative, so the directory can be moved (the loader resolves it against the directory).
    processor_config = directory / "processor_config.json"
    data = json.loads(processor_config.read_text())
    data["audio_tokenizer"] = {
        "audio_tokenizer_class": "PocketTTSAudioTokenizerModel",
        "audio_tokenizer_name_or_path": "audio_tokenizer",
    }
    processor_config.write_text(json.dumps(data, indent=2))

    (directory / "voices").mkdir(exist_ok=True)
    for index, name in enumerate(voices):
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        latents = torch.randn(spec["voice_frames"], latent_dim, generator=generator)
        save_file(
            {"audio_prompt_latents": latents}, str(directory / "voices" / f"{name}.safetensors")
        )
    return directory
