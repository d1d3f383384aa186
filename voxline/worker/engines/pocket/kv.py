"""Key/value storage for continuous batching: one slot per sentence, and the attention that
reads it.

transformers' caches keep one tensor per layer for the whole batch, so a sentence joining or
leaving means re-padding or copying every row. Here each sentence owns a slot of a
preallocated buffer for its whole life: joining writes its prefix into a free slot, leaving
just frees it, and a decode step writes one key/value per slot and runs ONE attention call
per layer over the slots in use, with a length mask. The backbone's own modules compute
everything else; this attention is plugged in through transformers' AttentionInterface and
is used only when a forward carries a `voxline` layout (otherwise it is plain SDPA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "voxline_slots"


class SlotStore:
    """Keys and values of every layer for up to `slots` sentences, grown on demand."""

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        slots: int,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int = 256,
    ) -> None:
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.slots = slots
        self.capacity = capacity
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.lengths = [0] * slots
        self._free = list(range(slots))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        # Lowest first, so the slots in use stay packed at the front of the buffer and a
        # decode step reads a dense prefix of it.
        self._free.sort()
        slot = self._free.pop(0)
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        self._free.append(slot)

    def reserve(self, length: int) -> None:
        """Make room for `length` positions in every slot (doubling, so growth is rare)."""
        if length <= self.capacity:
            return
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = old.new_zeros(self.slots, self.kv_heads, capacity, self.head_dim)
                new[:, :, : self.capacity] = old
                store[i] = new
        self.capacity = capacity

    def load(self, slot: int, prefix: VoicePrefix) -> None:
        """Start `slot` with a cached prefix (a voice prompt)."""
        self.reserve(prefix.length + 1)
        for layer in range(self.layers if prefix.length else 0):
            self.keys[layer][slot, :, : prefix.length] = prefix.keys[layer]
            self.values[layer][slot, :, : prefix.length] = prefix.values[layer]
        self.lengths[slot] = prefix.length


@dataclass(frozen=True, slots=True)
class VoicePrefix:
    """The backbone's keys and values for a voice prompt, computed once and copied into each
    sentence's slot: (kv_heads, length, head_dim) per layer."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int


class Layout:
    """Which slot each packed token belongs to, for one forward.

    Tokens are packed into one sequence: `counts[i]` tokens of `slots[i]`, in order. A
    decode step packs one token per slot.
    """

    def __init__(self, store: SlotStore, slots: list[int], counts: list[int]) -> None:
        self.store = store
        self.slots = slots
        self.counts = counts
        self.starts = [store.lengths[s] for s in slots]
        self.decode = all(c == 1 for c in counts)
        device = store.device
        if self.decode:
            self._slot_index = torch.tensor(slots, device=device)
            self._positions = torch.tensor(self.starts, device=device)
            used = max(slots) + 1
            self._span = max(self.starts) + 1
            ends = torch.zeros(used, dtype=torch.long, device=device)
            ends[self._slot_index] = self._positions + 1
            # Free slots inside the span attend to position 0 only, so their (discarded)
            # rows stay finite.
            ends.clamp_(min=1)
            self._mask = (torch.arange(self._span, device=device) < ends[:, None])[:, None, None]
            self._used = used
        store.reserve(max(s + c for s, c in zip(self.starts, counts, strict=True)) + 1)

    def position_ids(self) -> torch.Tensor:
        positions = [torch.arange(s, s + c) for s, c in zip(self.starts, self.counts, strict=True)]
        return torch.cat(positions)[None].to(self.store.device)

    def commit(self) -> None:
        """Count the packed tokens into their slots (after the forward wrote them). A slot
        packed twice in a decode step (padding, see Backbone.step) wrote the same key/value
        twice at one position: it counts once."""
        slots = dict.fromkeys(self.slots) if self.decode else self.slots
        for slot, count in zip(slots, self.counts, strict=False):
            self.store.lengths[slot] += count

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        """query (1, heads, tokens, dim), key/value (1, kv_heads, tokens, dim) of the packed
        tokens; returns (1, tokens, heads, dim) as transformers' attention functions do."""
        keys, values = self.store.keys[layer], self.store.values[layer]
        gqa = query.shape[1] != key.shape[1]
        if self.decode:
            new_k = key[0].transpose(0, 1)  # (tokens, kv_heads, dim)
            new_v = value[0].transpose(0, 1)
            keys[self._slot_index, :, self._positions] = new_k
            values[self._slot_index, :, self._positions] = new_v
            q = query.new_zeros(self._used, query.shape[1], 1, query.shape[3])
            q[self._slot_index] = query[0].transpose(0, 1)[:, :, None]
            out = F.scaled_dot_product_attention(
                q,
                keys[: self._used, :, : self._span],
                values[: self._used, :, : self._span],
                attn_mask=self._mask,
                scale=scaling,
                enable_gqa=gqa,
            )
            return out[self._slot_index, :, 0][None]
        outputs = []
        offset = 0
        for slot, start, count in zip(self.slots, self.starts, self.counts, strict=True):
            end = start + count
            keys[slot, :, start:end] = key[0, :, offset : offset + count]
            values[slot, :, start:end] = value[0, :, offset : offset + count]
            q = query[:, :, offset : offset + count]
            # Causal with an offset: query i sits at position start + i.
            mask = torch.arange(end, device=q.device)[None] <= (
                torch.arange(count, device=q.device)[:, None] + start
            )
            out = F.scaled_dot_product_attention(
                q,
                keys[slot : slot + 1, :, :end],
                values[slot : slot + 1, :, :end],
                attn_mask=mask,
                scale=scaling,
                enable_gqa=gqa,
            )
            outputs.append(out.transpose(1, 2))
            offset += count
        return torch.cat(outputs, dim=1)


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    voxline: Layout | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if voxline is None:  # an ordinary forward (generate(), voice prefill): plain SDPA
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = module.layer_idx  # torch types a module's attributes Tensor | Module
    assert isinstance(layer, int)
    return voxline.attend(layer, query, key, value, scale), None


AttentionInterface.register(ATTENTION, _attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
