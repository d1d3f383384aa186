"""Loading a Pocket TTS checkpoint (hub id or local directory) once per process, on a chosen
device and dtype, with one clear error when it is not there."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    PocketTTSAudioTokenizerModel,
    PocketTTSFeatureExtractor,
    PocketTTSForConditionalGeneration,
    PocketTTSProcessor,
)

from voxline.worker.engines.checkpoints import available_cpus, missing_model, offline
from voxline.worker.engines.checkpoints import resolve_device as _resolve_device

log = logging.getLogger("voxline.worker.pocket")

# The transformers-format checkpoint transformers' PocketTTS* classes document; Kyutai's own
# repos hold the native layout (tts_*.safetensors, tokenizer.model, no config.json), which
# transformers cannot load.
DEFAULT_MODEL = "eustlb/pocket-tts"
NATIVE_REPOS = frozenset({"kyutai/pocket-tts", "kyutai/pocket-tts-without-voice-cloning"})


class ModelNotFound(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    try:
        return torch.device(_resolve_device("pocket-tts", name))
    except RuntimeError as exc:  # an option the constructor refuses, like any other
        raise ValueError(str(exc)) from None


def cpu_has_bf16() -> bool:
    """Native bf16 dot products (AVX512-BF16 or AMX): there, oneDNN's bf16 matmuls for a
    few rows run 3-7x faster than fp32 (measured on this project's 2-core EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # The backbone is bound by reading its weights every step: bf16 halves that, and
        # GPUs and bf16-capable CPUs compute it natively. Elsewhere fp32 is the fast path.
        if device.type == "cuda" or cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype must be auto or one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def configure_threads(device: torch.device, threads: int | None) -> int:
    """Intra-op threads for CPU inference: by default every CPU this process may use."""
    if device.type != "cpu":
        return torch.get_num_threads()
    count = threads or available_cpus()
    torch.set_num_threads(count)
    return count


@dataclass(slots=True)
class Loaded:
    model: PocketTTSForConditionalGeneration
    processor: PocketTTSProcessor
    codec: PocketTTSAudioTokenizerModel
    voices_dir: Path | None


def _missing(model_id: str, exc: Exception) -> ModelNotFound:
    return ModelNotFound(
        str(missing_model("pocket-tts", "Pocket TTS", model_id, DEFAULT_MODEL, exc))
    )


def _native(model_id: str, local: Path | None) -> bool:
    """Kyutai's native layout: weights or a tokenizer but no config.json for transformers."""
    if local is None:
        return model_id.rstrip("/") in NATIVE_REPOS
    if (local / "config.json").exists():
        return False
    return any(local.glob("*.safetensors")) or (local / "tokenizer.model").exists()


def _processor(source: str, local: Path | None, codec_kwargs: dict) -> PocketTTSProcessor:
    """The processor; a local checkpoint may name its audio tokenizer relative to itself,
    which transformers would resolve against the current directory instead."""
    if local is not None and (local / "processor_config.json").exists():
        data = json.loads((local / "processor_config.json").read_text())
        codec_ref = (data.get("audio_tokenizer") or {}).get("audio_tokenizer_name_or_path")
        if codec_ref and not Path(codec_ref).is_absolute() and (local / codec_ref).is_dir():
            codec = PocketTTSAudioTokenizerModel.from_pretrained(local / codec_ref, **codec_kwargs)
            options = {
                key: data[key]
                for key in (
                    "short_text_max_words",
                    "frames_after_eos_short_text",
                    "frames_after_eos",
                    "fade_in_duration",
                )
                if key in data
            }
            template = local / "chat_template.jinja"
            return PocketTTSProcessor(
                feature_extractor=PocketTTSFeatureExtractor.from_pretrained(local),
                tokenizer=AutoTokenizer.from_pretrained(local),
                audio_tokenizer=codec,
                chat_template=template.read_text() if template.exists() else None,
                **options,
            )
    return AutoProcessor.from_pretrained(source, **codec_kwargs)


def codec_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    # The codec is convolutions over 1920 samples a frame: on CPUs oneDNN runs them faster in
    # fp32 than in bf16 (measured), and fp32 keeps the waveform exact.
    return dtype if device.type == "cuda" else torch.float32


def load(model_id: str, device: torch.device, dtype: torch.dtype) -> Loaded:
    local = Path(model_id) if Path(model_id).is_dir() else None
    if _native(model_id, local):
        raise ModelNotFound(
            f"native pocket-tts checkpoint at {model_id}; "
            f"use a transformers-format one such as {DEFAULT_MODEL}"
        )
    kwargs: dict[str, Any] = {"local_files_only": local is not None or offline()}
    try:
        model = PocketTTSForConditionalGeneration.from_pretrained(model_id, dtype=dtype, **kwargs)
        processor = _processor(model_id, local, {**kwargs, "dtype": codec_dtype(device, dtype)})
    except OSError as exc:
        raise _missing(model_id, exc) from exc
    # Set at run time from the processor's `attributes`; transformers declares no such field.
    codec = processor.audio_tokenizer  # type: ignore[attr-defined]
    if codec is None:
        raise ModelNotFound(f"Pocket TTS model {model_id!r} has no audio tokenizer to decode with")
    # transformers wraps `to` in functools.wraps, whose type does not bind `self`.
    model.to(device).eval()  # type: ignore[arg-type]
    codec.to(device).eval()
    voices = local / "voices" if local is not None and (local / "voices").is_dir() else None
    log.info(
        "loaded Pocket TTS %s on %s: backbone %s, codec %s",
        model_id,
        device,
        dtype,
        codec.dtype,
    )
    return Loaded(model=model, processor=processor, codec=codec, voices_dir=voices)
