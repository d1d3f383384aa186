"""Voices: the checkpoint's shipped voice prompts and clones from reference clips, each turned
into backbone keys/values once and reused for every sentence spoken in it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
from safetensors.torch import load_file

from voxline.shared.audio.wav import parse_wav
from voxline.worker.engines.base import EngineError
from voxline.worker.engines.pocket.backbone import Backbone
from voxline.worker.engines.pocket.kv import VoicePrefix

DEFAULT_VOICE = "default"  # a checkpoint without shipped voices speaks unprompted
_CLONE_CACHE = 32


@dataclass(frozen=True, slots=True)
class Prompt:
    """A sentence ready for the backbone."""

    text_ids: torch.Tensor
    prefix: VoicePrefix
    frames_after_eos: int
    max_frames: int


def decode_ref_audio(ref_audio: str) -> tuple[np.ndarray, int]:
    """A WAV file as base64 or a `data:audio/wav;base64,` URL → float mono samples, rate."""
    payload = ref_audio.split(",", 1)[1] if ref_audio.startswith("data:") else ref_audio
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise EngineError("ref_audio must be a base64 WAV file or a data: URL of one") from None
    try:
        wav = parse_wav(data)
    except ValueError as exc:
        raise EngineError(f"ref_audio: {exc}") from None
    if wav.format_tag != 1 or wav.sample_width != 2 or wav.channels < 1:
        raise EngineError("ref_audio must be 16-bit PCM WAV")
    usable = len(wav.frames) // (2 * wav.channels) * 2 * wav.channels
    pcm = np.frombuffer(wav.frames[:usable], "<i2").reshape(-1, wav.channels).mean(axis=1)
    if len(pcm) < wav.sample_rate // 2:
        raise EngineError("ref_audio must hold at least 0.5 s of audio")
    return (pcm / 32768.0).astype(np.float32), wav.sample_rate


class Voices:
    """Voice name or clip → prompt latents → cached backbone prefix."""

    def __init__(self, backbone: Backbone, processor, voices_dir: Path | None) -> None:
        self.backbone = backbone
        self.processor = processor
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.placeholder = backbone.config.audio_prompt_token_id
        self.placeholders = torch.tensor(
            [
                backbone.config.audio_prompt_bos_token_id,
                backbone.config.audio_prompt_token_id,
                backbone.config.audio_bos_token_id,
                backbone.config.audio_latent_token_id,
            ]
        )
        self.frame_rate = float(backbone.config.frame_rate)
        self.shipped: dict[str, torch.Tensor] = {}
        if voices_dir is not None:
            for path in sorted(voices_dir.glob("*.safetensors")):
                self.shipped[path.stem] = load_file(str(path))["audio_prompt_latents"].float()
        self.names = tuple(self.shipped) or (DEFAULT_VOICE,)
        codec = processor.audio_tokenizer
        self.can_clone = codec is not None and codec.config.encoder_config is not None
        self._prefixes: dict[tuple[str, bytes], VoicePrefix] = {}
        self._clones: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # prompts are prepared off the scheduler thread

    def prompt(
        self, text: str, voice: str, ref_audio: str | None, max_frames: int | None
    ) -> Prompt:
        if ref_audio is not None:
            key, latents = self._clone(ref_audio)
        elif voice in self.shipped:
            key, latents = voice, self.shipped[voice]
        elif voice == DEFAULT_VOICE and not self.shipped:
            key, latents = voice, None
        else:
            raise EngineError(f"unknown voice {voice!r}; this model has {list(self.names)}")
        content = [{"type": "text", "text": text}]
        if latents is not None:
            content.insert(0, {"type": "audio", "audio": "voice"})
        rendered = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False
        )
        inputs = self.processor(
            text=rendered,
            audio_prompt_latents=[latents] if latents is not None else None,
            return_tensors="pt",
        )
        ids = inputs["input_ids"][0]
        voice_at = (ids == self.placeholder).nonzero()
        split = int(voice_at.max()) + 1 if len(voice_at) else 0
        prefix = self._prefix(key, ids[:split], latents)
        text_tokens = int((~torch.isin(ids, self.placeholders)).sum())
        budget = math.ceil((text_tokens / 3 + 2) * self.frame_rate)  # generate()'s default
        return Prompt(
            text_ids=ids[split:],
            prefix=prefix,
            frames_after_eos=int(inputs["frames_after_eos"][0]),
            max_frames=max_frames or budget,
        )

    def _prefix(self, key: str, ids: torch.Tensor, latents: torch.Tensor | None) -> VoicePrefix:
        cache_key = (key, ids.numpy().tobytes())
        with self._lock:
            prefix = self._prefixes.get(cache_key)
            if prefix is None:
                if len(ids) == 0 or latents is None:
                    prefix = self.backbone.empty_prefix() if len(ids) == 0 else None
                if prefix is None:
                    # Without latents there is no voice placeholder: `ids` is empty, done above.
                    assert latents is not None
                    prefix = self.backbone.voice_prefix(ids, latents)
                self._prefixes[cache_key] = prefix
                self._trim()
            return prefix

    def _trim(self) -> None:
        # Clones come and go with sessions; shipped voices stay.
        clones = [k for k in self._prefixes if k[0].startswith("clone:")]
        for stale in clones[: max(0, len(clones) - _CLONE_CACHE)]:
            del self._prefixes[stale]

    def _clone(self, ref_audio: str) -> tuple[str, torch.Tensor]:
        if not self.can_clone:
            raise EngineError("this model's audio tokenizer has no encoder: it cannot clone voices")
        key = "clone:" + hashlib.sha256(ref_audio.encode()).hexdigest()
        with self._lock:
            cached = self._clones.get(key)
            if cached is not None:
                self._clones.move_to_end(key)
                return key, cached
        samples, rate = decode_ref_audio(ref_audio)
        if rate != self.sample_rate:
            samples = soxr.resample(samples, rate, self.sample_rate)
        encoded = self.processor(
            text=self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "audio", "audio": "ref"}]}],
                tokenize=False,
            ),
            audio=[samples],
            sampling_rate=self.sample_rate,
            return_tensors="pt",
        )
        latents = encoded["audio_prompt_latents"][0][encoded["audio_prompt_latents_mask"][0].bool()]
        with self._lock:
            self._clones[key] = latents
            while len(self._clones) > _CLONE_CACHE:
                self._clones.popitem(last=False)
        return key, latents
