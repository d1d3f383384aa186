"""Exact streaming decoding of the Pocket TTS audio tokenizer, many streams per batch.

`PocketTTSAudioTokenizerModel.decode` turns a whole utterance of latents into audio. A streaming
server gets the latents one 80 ms frame at a time, for dozens of streams, so this runs the same
modules (same weights, same ops) incrementally:

- each causal convolution carries its last `(kernel - 1) * dilation` input samples, which are what
  the whole-utterance decode's left padding / earlier samples would have been;
- each transposed convolution carries the `kernel - stride` overlap-add samples it cannot emit
  yet (the whole-utterance decode trims them off the right end), bias left out of them so that it
  is added exactly once per sample;
- each decoder transformer layer carries the keys/values of the `sliding_window - 1` latest
  positions (RoPE already applied), which is all a sliding-window query can still see; they sit
  in a buffer with room after them, so a call appends in place instead of copying the window.

Concatenating the chunks of a stream equals `PocketTTSProcessor.decode` (whole-utterance decode
and its linear fade-in) up to float rounding. A `step` stacks the states of the streams it is
given into one batch: rows may be at different positions, which only changes their RoPE
positions and which cached keys are valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.pocket_tts_audio_tokenizer.modeling_pocket_tts_audio_tokenizer import (
    PocketTTSAudioTokenizerConv1d,
    PocketTTSAudioTokenizerConvTranspose1d,
    PocketTTSAudioTokenizerModel,
    PocketTTSAudioTokenizerResnetBlock,
    PocketTTSAudioTokenizerTransformerLayer,
    apply_rotary_pos_emb,
    repeat_kv,
)

# Left-padding modes whose first output can be produced without seeing the future: "constant" is
# zeros (what a fresh carry holds), "replicate" repeats the stream's very first input sample.
_STREAMABLE_PAD_MODES = ("constant", "replicate")


class _Carry:
    """What the rows of one `step` call carry, batch first; each state points at its row.

    `conv` holds one small tensor per slot (conv left contexts, transposed-conv tails), replaced
    every call. `keys`/`values` hold one (rows, kv_heads, capacity, head_dim) buffer per layer,
    each row's window being columns [end - keep, end): a call writes its new keys after `end`, so
    the same rows in the same order (the steady state) cost no copy at all, and the columns its
    states read are never overwritten (a call that fails leaves them usable).
    """

    __slots__ = ("conv", "keys", "values", "end", "rows")

    def __init__(
        self,
        conv: list[torch.Tensor],
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        end: int,
        rows: int,
    ) -> None:
        self.conv, self.keys, self.values = conv, keys, values
        self.end, self.rows = end, rows


class CodecState:
    """What one stream carries between `StreamingDecoder.step` calls; opaque to callers."""

    __slots__ = ("frames", "_carry", "_row")

    def __init__(self) -> None:
        self.frames = 0  # latent frames decoded so far: RoPE positions, valid keys, fade-in
        self._carry: _Carry | None = None  # None: nothing decoded yet, i.e. all-zero carry
        self._row = 0


class _Slots:
    """Registry of the carried tensors' shapes (batch dim excluded), one index per tensor."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def add(self, *shape: int) -> int:
        self.shapes.append(shape)
        return len(self.shapes) - 1


@dataclass
class _Step:
    """Per-call inputs of the ops: the conv carry read (`old`) and written (`new`), the key/value
    buffers and where this call's positions go in them (`end`)."""

    old: list[torch.Tensor]
    new: list[torch.Tensor]  # starts as a copy of `old`; every op replaces its slots
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    end: int
    fresh: torch.Tensor | None  # (B,) rows on their first frame; only for replicate padding
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class _CausalConv:
    """`PocketTTSAudioTokenizerConv1d` (causal, stride 1) fed its carried left context."""

    def __init__(self, module: PocketTTSAudioTokenizerConv1d, slots: _Slots) -> None:
        conv = module.conv
        if conv.stride[0] != 1 or conv.padding[0] != 0:
            raise ValueError("only stride-1, unpadded decoder convolutions stream sample-exactly")
        self.conv = conv
        # the reference left-pads by padding_total = (kernel - 1) * dilation (and, for stride 1,
        # its `_get_extra_padding_for_conv1d` right padding is always 0)
        self.context = int(module.padding_total)
        self.replicate = module.pad_mode == "replicate"
        self.slot = slots.add(conv.in_channels, self.context) if self.context else -1

    def __call__(self, x: torch.Tensor, step: _Step) -> torch.Tensor:
        if self.slot < 0:
            return self.conv(x)
        past = step.old[self.slot]
        if self.replicate and step.fresh is not None:
            past = torch.where(step.fresh[:, None, None], x[..., :1].expand_as(past), past)
        full = torch.cat([past, x], dim=-1)
        # copied: a view would keep the whole (possibly 24 kHz-long) input alive between calls
        step.new[self.slot] = full[..., -self.context :].contiguous()
        return self.conv(full)


class _CausalConvTranspose:
    """`PocketTTSAudioTokenizerConvTranspose1d` (causal, right-trimmed) as overlap-add."""

    def __init__(self, module: PocketTTSAudioTokenizerConvTranspose1d, slots: _Slots) -> None:
        conv = module.conv
        if module.padding_left != 0:
            # part of the trim is on the left: the reference's last samples are then partial
            # overlap-adds, which a stream cannot know are last (trim_right_ratio != 1)
            raise ValueError("only trim_right_ratio=1.0 transposed convolutions stream exactly")
        if conv.padding[0] != 0 or conv.output_padding[0] != 0 or conv.dilation[0] != 1:
            raise ValueError("unexpected padding/dilation on a decoder transposed convolution")
        self.conv = conv
        self.stride = conv.stride[0]
        self.tail = conv.kernel_size[0] - self.stride  # == module.padding_right
        self.slot = slots.add(conv.out_channels, self.tail) if self.tail else -1

    def __call__(self, x: torch.Tensor, step: _Step) -> torch.Tensor:
        conv = self.conv
        # bias-free, so the carried tail holds weight terms only and the bias lands once per sample
        y = F.conv_transpose1d(x, conv.weight, None, self.stride, 0, 0, conv.groups)
        emit = x.shape[-1] * self.stride
        if self.slot >= 0:
            y[..., : self.tail] += step.old[self.slot]
            step.new[self.slot] = y[..., emit:].contiguous()
        out = y[..., :emit]
        if conv.bias is not None:
            out.add_(conv.bias[:, None])
        return out


class _Pointwise:
    """Stateless, sample-wise module (ELU, Identity): streams as is."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor, step: _Step) -> torch.Tensor:
        return self.module(x)


class _Residual:
    """`PocketTTSAudioTokenizerResnetBlock`: its branch and shortcut, each streamed."""

    def __init__(self, block: PocketTTSAudioTokenizerResnetBlock, slots: _Slots) -> None:
        self.branch = [_compile(layer, slots) for layer in block.block]
        self.shortcut = _compile(block.shortcut, slots)

    def __call__(self, x: torch.Tensor, step: _Step) -> torch.Tensor:
        h = x
        for op in self.branch:
            h = op(h, step)
        return self.shortcut(x, step) + h


_Op = _CausalConv | _CausalConvTranspose | _Pointwise | _Residual


def _compile(module: nn.Module, slots: _Slots) -> _Op:
    if isinstance(module, PocketTTSAudioTokenizerConv1d):
        return _CausalConv(module, slots)
    if isinstance(module, PocketTTSAudioTokenizerConvTranspose1d):
        return _CausalConvTranspose(module, slots)
    if isinstance(module, PocketTTSAudioTokenizerResnetBlock):
        return _Residual(module, slots)
    if isinstance(module, nn.ELU | nn.Identity):
        return _Pointwise(module)
    # anything else may mix samples over time: refuse rather than stream it wrongly
    raise TypeError(f"don't know how to stream {type(module).__name__}")


class _TransformerLayer:
    """`PocketTTSAudioTokenizerTransformerLayer` over new positions plus the cached window."""

    def __init__(
        self, layer: PocketTTSAudioTokenizerTransformerLayer, index: int, keep: int
    ) -> None:
        self.layer = layer
        self.index = index
        self.keep = keep
        self.head_dim = layer.self_attn.head_dim
        self.groups = layer.self_attn.num_key_value_groups

    def __call__(self, h: torch.Tensor, step: _Step) -> torch.Tensor:
        layer, attn = self.layer, self.layer.self_attn
        batch, length, _ = h.shape
        x = layer.input_layernorm(h)
        shape = (batch, length, -1, self.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, step.cos, step.sin)
        window = slice(step.end - self.keep, step.end + length)
        keys, values = step.keys[self.index], step.values[self.index]
        keys[:, :, step.end : window.stop] = k
        values[:, :, step.end : window.stop] = v
        out = F.scaled_dot_product_attention(
            q,
            repeat_kv(keys[:, :, window], self.groups),
            repeat_kv(values[:, :, window], self.groups),
            attn_mask=step.mask,
            scale=attn.scaling,
        )
        out = attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
        h = h + layer.self_attn_layer_scale(out)
        return h + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(h)))


class StreamingDecoder:
    """Decodes latent frames of many streams, batched, exactly as the whole-utterance decode."""

    def __init__(
        self, audio_tokenizer: PocketTTSAudioTokenizerModel, fade_in_seconds: float = 0.005
    ) -> None:
        config = audio_tokenizer.config
        decoder = audio_tokenizer.decoder
        if decoder is None:
            raise ValueError("the audio tokenizer has no decoder (loaded with decoder_config=None)")
        if not config.use_causal_conv:
            raise ValueError("non-causal convolutions need future samples: cannot stream")
        if config.pad_mode not in _STREAMABLE_PAD_MODES:
            raise ValueError(f"pad_mode {config.pad_mode!r} needs future samples: cannot stream")
        if config.sliding_window is None or config.sliding_window < 1:
            raise ValueError("the decoder transformer needs a sliding window to stream bounded")
        self.tokenizer = audio_tokenizer
        self.frame_size: int = config.frame_size
        self.sample_rate: int = config.sampling_rate
        weight = audio_tokenizer.latent_proj.weight
        self.device, self.dtype = weight.device, weight.dtype

        slots = _Slots()
        self._upsample = (
            _CausalConvTranspose(decoder.upsample, slots) if decoder.upsample is not None else None
        )
        # transformer positions per latent frame
        self._tokens_per_frame = decoder.upsample.conv.stride[0] if self._upsample else 1
        # a query sees itself and the `sliding_window - 1` positions before it
        self._keep = config.sliding_window - 1
        transformer = decoder.decoder_transformer
        self._rotary = transformer.rotary_emb
        self._layers = [
            _TransformerLayer(layer, i, self._keep) for i, layer in enumerate(transformer.layers)
        ]
        attn = transformer.layers[0].self_attn
        self._kv_shape = (attn.num_key_value_heads, attn.head_dim)
        self._seanet = [_compile(layer, slots) for layer in decoder.decoder_seanet.layers]
        hop = math.prod(op.stride for op in _transposes(self._seanet))
        if self._tokens_per_frame * hop != self.frame_size or config.audio_channels != 1:
            raise ValueError("decoder does not output frame_size mono samples per latent frame")

        self._zeros = [
            torch.zeros(1, *s, device=self.device, dtype=self.dtype) for s in slots.shapes
        ]
        self._replicate = config.pad_mode == "replicate"
        self._masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # same construction as PocketTTSProcessor.decode, so the faded samples match bit for bit
        self._fade = torch.linspace(0, 1, int(fade_in_seconds * self.sample_rate))

    def new_state(self) -> CodecState:
        return CodecState()

    @torch.inference_mode()
    def step(self, latents: torch.Tensor, states: Sequence[CodecState]) -> torch.Tensor:
        """Decode `latents` (B, n, latent_dim), n new frames per stream, to (B, n * frame_size).

        `states` are the B streams' states, updated in place (only once the call succeeds).
        Returns float32 CPU audio, the fade-in applied to each stream's first samples.
        """
        batch, frames = self._check(latents, states)
        if batch == 0:
            return torch.zeros(0, frames * self.frame_size)
        carry = self._stack(states, frames * self._tokens_per_frame)
        fresh = None
        if self._replicate and any(s.frames == 0 for s in states):
            fresh = torch.tensor([s.frames == 0 for s in states], device=self.device)
        step = _Step(
            old=carry.conv,
            new=list(carry.conv),
            keys=carry.keys,
            values=carry.values,
            end=carry.end,
            fresh=fresh,
        )

        x = latents.to(device=self.device, dtype=self.dtype).transpose(1, 2)
        x = self.tokenizer.latent_proj(x)  # 1x1: no carry
        if self._upsample is not None:
            x = self._upsample(x, step)
        h = self._transformer(x.transpose(1, 2), states, step)
        x = h.transpose(1, 2)
        for op in self._seanet:
            x = op(x, step)

        audio = x[:, 0].float().cpu()
        self._fade_in(audio, states)
        end = carry.end + frames * self._tokens_per_frame
        done = _Carry(step.new, carry.keys, carry.values, end, batch)
        for row, state in enumerate(states):
            state._carry, state._row = done, row
            state.frames += frames
        return audio

    def _check(self, latents: torch.Tensor, states: Sequence[CodecState]) -> tuple[int, int]:
        if latents.dim() != 3 or latents.shape[0] != len(states) or latents.shape[1] < 1:
            raise ValueError(f"latents {tuple(latents.shape)} for {len(states)} states")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a stream's state appears twice in one step")
        return latents.shape[0], latents.shape[1]

    def _stack(self, states: Sequence[CodecState], length: int) -> _Carry:
        """The rows' carries as one batch, with room for `length` new positions."""
        batch, first, keep = len(states), states[0]._carry, self._keep
        if first is not None and first.rows == batch:
            if all(s._carry is first and s._row == row for row, s in enumerate(states)):
                if first.end + length <= first.keys[0].shape[2]:
                    return first  # the steady state: nothing to copy
                # out of room: the windows move to the front of new buffers (new, so the states
                # keep theirs until this call succeeds); once per ~keep / length calls
                keys, values = self._kv_buffers(batch, length)
                for new, old in zip(keys + values, first.keys + first.values, strict=True):
                    new[:, :, :keep] = old[:, :, first.end - keep : first.end]
                return _Carry(first.conv, keys, values, keep, batch)
        keys, values = self._kv_buffers(batch, length)
        fresh = [row for row, s in enumerate(states) if s._carry is None]
        if len(fresh) == batch:
            for new in keys + values:
                new[:, :, :keep].zero_()
            # zero conv carries are only read, so broadcast views do
            conv = [z.expand(batch, *z.shape[1:]) for z in self._zeros]
            return _Carry(conv, keys, values, keep, batch)
        if fresh:
            # a fresh row's window is masked off, but must be finite: 0 * NaN is NaN
            index = torch.tensor(fresh, device=self.device)
            for new in keys + values:
                new[index, :, :keep] = 0
        conv = [z.expand(batch, *z.shape[1:]).clone() for z in self._zeros]
        for carry, rows, src in self._by_carry(states):
            for new, old in zip(conv, carry.conv, strict=True):
                new[rows] = old[src]
            for new, old in zip(keys + values, carry.keys + carry.values, strict=True):
                new[rows, :, :keep] = old[src, :, carry.end - keep : carry.end]
        return _Carry(conv, keys, values, keep, batch)

    def _by_carry(
        self, states: Sequence[CodecState]
    ) -> list[tuple[_Carry, torch.Tensor, torch.Tensor]]:
        """(carry, rows here, rows there) per earlier call the rows come from: one batched copy
        each, not one per row."""
        found: dict[int, tuple[_Carry, list[int], list[int]]] = {}
        for row, state in enumerate(states):
            if state._carry is not None:
                _, rows, src = found.setdefault(id(state._carry), (state._carry, [], []))
                rows.append(row)
                src.append(state._row)
        return [
            (carry, torch.tensor(rows, device=self.device), torch.tensor(src, device=self.device))
            for carry, rows, src in found.values()
        ]

    def _kv_buffers(self, batch: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Uninitialised: the caller fills each row's window, the call writes after it."""
        heads, head_dim = self._kv_shape
        # room for `keep` more positions after the window: a move every ~keep / length calls
        shape = (batch, heads, self._keep + max(self._keep, length), head_dim)
        keys = [torch.empty(shape, device=self.device, dtype=self.dtype) for _ in self._layers]
        return keys, [torch.empty_like(k) for k in keys]

    def _transformer(
        self, h: torch.Tensor, states: Sequence[CodecState], step: _Step
    ) -> torch.Tensor:
        batch, length, _ = h.shape
        seen = torch.tensor([s.frames for s in states], device=self.device)
        seen = seen * self._tokens_per_frame  # positions already decoded, per row
        static, key_index = self._static_mask(length)
        step.cos, step.sin = self._rotary(h, seen[:, None] + key_index[:length])
        # key j of the (keep + length) concatenation sits at position seen - keep + j: the cached
        # slots of a young stream point before position 0 and are masked off
        valid = key_index[None, :] >= (self._keep - seen)[:, None]
        step.mask = static[None, None] & valid[:, None, None, :]
        for layer in self._layers:
            h = layer(h, step)
        return h

    def _static_mask(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal sliding-window mask of `length` queries over `keep + length` keys."""
        if length not in self._masks:
            key_index = torch.arange(self._keep + length, device=self.device)
            query = key_index[:length, None]
            # transformers' sliding window: key k visible to query q iff q - window < k <= q;
            # query i is at key index keep + i, so that is i <= j <= i + keep
            self._masks[length] = (
                (key_index >= query) & (key_index <= query + self._keep),
                key_index,
            )
        return self._masks[length]

    def _fade_in(self, audio: torch.Tensor, states: Sequence[CodecState]) -> None:
        for row, state in enumerate(states):
            start = state.frames * self.frame_size
            if start < len(self._fade):
                fade = self._fade[start : start + audio.shape[1]]
                audio[row, : len(fade)] *= fade


def _transposes(ops: list[_Op]) -> list[_CausalConvTranspose]:
    found: list[_CausalConvTranspose] = []
    for op in ops:
        if isinstance(op, _CausalConvTranspose):
            found.append(op)
        elif isinstance(op, _Residual):
            found += _transposes([*op.branch, op.shortcut])
    return found
