"""The Pocket TTS backbone stepped as one batch of sentences that come and go.

Mirrors `PocketTTSForConditionalGeneration.generate` (its `_sample` loop and end-of-speech
rule) for each sentence, but packs all sentences into one forward per step through the
model's own modules (see `kv.py`), so that a sentence may join or leave at any step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PocketTTSForConditionalGeneration
from transformers.cache_utils import CacheLayerMixin

from voxline.worker.engines.pocket.kv import ATTENTION, Layout, SlotStore, VoicePrefix

# The released checkpoints' values of the Pocket TTS generation knobs, used when the
# checkpoint's generation config does not set them (as transformers' generate() does).
_DEFAULTS = {"num_flow_steps": 1, "eos_threshold": -4.0, "min_frames_before_eos": 6}


@dataclass(frozen=True, slots=True)
class Sampling:
    """How latents are drawn and when a sentence ends, from the checkpoint's generation config."""

    do_sample: bool
    temperature: float
    num_flow_steps: int
    eos_threshold: float
    min_frames_before_eos: int

    @classmethod
    def of(cls, model: PocketTTSForConditionalGeneration) -> Sampling:
        config = model.generation_config
        values: dict[str, Any] = {key: getattr(config, key, None) for key in _DEFAULTS}
        values = {k: v if v is not None else _DEFAULTS[k] for k, v in values.items()}
        return cls(
            do_sample=bool(config.do_sample),
            temperature=float(config.temperature if config.temperature is not None else 1.0),
            **values,
        )

    @property
    def noise_scale(self) -> float:
        return math.sqrt(self.temperature) if self.do_sample else 0.0


@dataclass(slots=True)
class Sentence:
    """One sentence in the batch: its slot, its end-of-speech countdown, its noise."""

    text_ids: torch.Tensor  # (tokens,) ending with the first audio position
    prefix: VoicePrefix
    frames_after_eos: int
    max_frames: int
    seed: int
    slot: int = -1
    frames: int = 0
    remaining: int = -1  # frames left after end of speech; -1 until it is seen
    finished: bool = False
    last_latent: torch.Tensor | None = None  # normalised, the next step's input
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def latent(self) -> torch.Tensor:
        """`last_latent`, which the sentence's prefill sets (every step after has one)."""
        assert self.last_latent is not None
        return self.last_latent


class Backbone:
    """Runs prefill and steps for sentences in slots of one `SlotStore`."""

    def __init__(self, model: PocketTTSForConditionalGeneration, slots: int) -> None:
        self.model = model
        self.config = model.config
        self.sampling = Sampling.of(model)
        self.device = model.device
        self.dtype = model.dtype
        # Plain SDPA unless a forward carries a slot layout (see kv.py); the flow head has no
        # attention, so setting it on the config (not through the model) is enough.
        model.config._attn_implementation = ATTENTION
        self._padding: list[int] = []  # row count -> rows to run (see tune)
        kv_heads, head_dim = self.config.num_key_value_heads, self.config.head_dim
        assert kv_heads is not None and head_dim is not None  # the config fills both in
        self.store = SlotStore(
            layers=self.config.num_hidden_layers,
            kv_heads=kv_heads,
            head_dim=head_dim,
            slots=slots,
            dtype=self.dtype,
            device=self.device,
        )

    # -- voice prompts -------------------------------------------------------------------

    @torch.inference_mode()
    def voice_prefix(self, prefix_ids: torch.Tensor, latents: torch.Tensor) -> VoicePrefix:
        """The keys and values of a voice prompt: `prefix_ids` (tokens,) holding one voice
        placeholder per latent frame of `latents` (frames, latent_dim)."""
        cache = DynamicCache(config=self.config)
        self.model(
            input_ids=prefix_ids[None].to(self.device),
            audio_prompt_latents=latents[None].to(self.device),
            past_key_values=cache,
            use_cache=True,
        )
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for layer in cache.layers:
            # An attention layer's, filled by the forward (transformers' type: any layer kind).
            assert isinstance(layer, CacheLayerMixin)
            assert layer.keys is not None and layer.values is not None
            keys.append(layer.keys[0].clone())
            values.append(layer.values[0].clone())
        return VoicePrefix(keys=keys, values=values, length=int(prefix_ids.shape[0]))

    def empty_prefix(self) -> VoicePrefix:
        """No voice prompt: the sentence starts at position 0."""
        return VoicePrefix(keys=[], values=[], length=0)

    # -- the batch -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self.store.free_slots

    @torch.inference_mode()
    def admit(self, sentences: list[Sentence]) -> torch.Tensor:
        """Prefill `sentences` together (their text packed into one forward) and sample their
        first latents; returns the denormalised latents (n, latent_dim)."""
        for sentence in sentences:
            sentence.slot = self.store.allocate()
            self.store.load(sentence.slot, sentence.prefix)
            sentence.generator.manual_seed(sentence.seed)
        layout = Layout(
            self.store, [s.slot for s in sentences], [len(s.text_ids) for s in sentences]
        )
        input_ids = torch.cat([s.text_ids for s in sentences])[None].to(self.device)
        outputs = self.model(
            input_ids=input_ids,
            position_ids=layout.position_ids(),
            use_cache=False,
            voxline=layout,
        )
        layout.commit()
        last = torch.tensor(layout.counts).cumsum(0) - 1
        return self._sample(
            sentences, outputs.last_hidden_state[0, last], outputs.logits[0, last, 0]
        )

    @torch.inference_mode()
    def step(self, sentences: list[Sentence]) -> torch.Tensor:
        """One frame for each sentence; returns the denormalised latents (n, latent_dim)."""
        n = len(sentences)
        # Padding rows repeat the last sentence: same slot, same position, same values, so
        # they change nothing; they only move the matmuls to a faster shape (see tune).
        rows = sentences + [sentences[-1]] * (self.padded(n) - n)
        layout = Layout(self.store, [s.slot for s in rows], [1] * len(rows))
        input_ids = torch.full(
            (1, len(rows)), self.config.audio_latent_token_id, device=self.device
        )
        latents = torch.stack([s.latent for s in rows])[None]
        outputs = self.model(
            input_ids=input_ids,
            audio_latents=latents,
            position_ids=layout.position_ids(),
            use_cache=False,
            voxline=layout,
        )
        layout.commit()
        hidden = outputs.last_hidden_state[0, :n]
        return self._sample(sentences, hidden, outputs.logits[0, :n, 0])

    def padded(self, rows: int) -> int:
        return self._padding[rows] if rows < len(self._padding) else rows

    @torch.inference_mode()
    def tune(self, max_rows: int, repeats: int = 3) -> list[int]:
        """Measure the backbone's MLP at every row count up to `max_rows` and pad each count to
        the cheapest count at or above it. CPU GEMM libraries switch kernels with the row
        count: here 2 or 3 rows cost more than 4, and 1 row (a GEMV) much less."""
        if self.device.type != "cpu":
            return self._padding
        mlp = self.model.model.layers[0].mlp
        hidden = self.config.hidden_size
        cost = [0.0]
        for rows in range(1, max_rows + 1):
            x = torch.randn(1, rows, hidden, dtype=self.dtype)
            mlp(x)
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                mlp(x)
                best = min(best, time.perf_counter() - started)
            cost.append(best)
        padding = list(range(max_rows + 1))
        for rows in range(1, max_rows + 1):
            best = min(range(rows, max_rows + 1), key=lambda r: (cost[r], r))
            # Only for a clear gain: timing noise must not send 5 rows through 16.
            padding[rows] = best if cost[best] < 0.9 * cost[rows] else rows
        self._padding = padding
        return padding

    def release(self, sentence: Sentence) -> None:
        if sentence.slot >= 0:
            self.store.release(sentence.slot)
            sentence.slot = -1

    def _sample(
        self, sentences: list[Sentence], condition: torch.Tensor, eos_logits: torch.Tensor
    ) -> torch.Tensor:
        latent_dim = self.config.latent_dim
        scale = self.sampling.noise_scale
        if scale:
            # One generator per sentence: its noise does not depend on who shares the batch.
            noise = torch.stack(
                [torch.randn(latent_dim, generator=s.generator) for s in sentences]
            ).to(condition.device, condition.dtype)
            noise = noise * scale
        else:
            noise = condition.new_zeros(len(sentences), latent_dim)
        latents = self.model.sample_latent(condition, noise, self.sampling.num_flow_steps)
        eos = eos_logits.float().cpu().tolist()
        for sentence, latent, logit in zip(sentences, latents, eos, strict=True):
            sentence.last_latent = latent
            self._count_frame(sentence, logit)
        return self.model.denormalize_latents(latents)

    def _count_frame(self, sentence: Sentence, eos_logit: float) -> None:
        # transformers' PocketTTSEosThresholdCriteria, per sentence; every frame generated
        # while running is kept, the one that crossed the threshold and the tail included.
        can_end = sentence.frames >= self.sampling.min_frames_before_eos
        sentence.frames += 1
        if sentence.remaining < 0 and eos_logit > self.sampling.eos_threshold and can_end:
            sentence.remaining = sentence.frames_after_eos
        if sentence.remaining == 0 or sentence.frames >= sentence.max_frames:
            sentence.finished = True
        elif sentence.remaining > 0:
            sentence.remaining -= 1
