"""The decode batch: every active request's KV cache in one left-padded transformers `DynamicCache`.

transformers' attention takes a batch of sequences of different lengths as a left-padded cache with
a `[B, T]` attention mask (0 on padding) and per-row position ids, so one forward decodes every active
request. Requests join after a prefill forward of their own (`prefill_inputs`: new prompts left-padded
together) and leave when done; padding shared by every row is trimmed when a request leaves. Keys and
values are `[B, heads, T, head_dim]` per layer; DeepSeek-V2's keys and values differ in `head_dim`,
which nothing here depends on.

Padding costs attention work only: the engine sends only real tokens to the expert workers.

transformers' `DynamicLayer` appends a step's key and value by concatenation, a copy of the whole cache
per layer and step (~7 ms of a ~38 ms batch-32 decode forward of the `small` Mixtral, one thread). The
batch's layers are `GrowingLayer`s instead: the same tensors with spare room at the end, written in place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_POSITIONS = 64  # room a growing layer adds when it is full: one copy every 64 decode steps


def prefill_inputs(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """Model inputs for prompts of any lengths, left-padded to the longest: `input_ids`,
    `attention_mask`, `position_ids` `[B, T]`."""
    length = max(len(prompt) for prompt in prompts)
    input_ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt):] = torch.tensor(prompt)
        mask[row, length - len(prompt):] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


class DecodeBatch:
    """The KV caches, attention mask and positions of the requests being decoded, in row order.

    rows: the requests (any objects), row b of every tensor.  cache: transformers' cache, keys/values
    `[B, heads, T, d]` per layer.  mask: `[B, T]` int64, 1 on real positions.  lengths: `[B]` int64,
    each row's real length (its next position id).
    """

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long)
        self.lengths = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: list[Any], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add prefilled requests: `cache` and `mask` `[b, T']` from their prefill forward."""
        if self.cache is None:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            self.lengths = mask.sum(1)
            cache.layers = [GrowingLayer.holding(layer) if type(layer) is DynamicLayer else layer
                            for layer in cache.layers]
            return
        old, new = self.mask.shape[1], mask.shape[1]
        length = max(old, new)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length - old), _pad_left(theirs.keys, length - new)])
            mine.values = torch.cat([_pad_left(mine.values, length - old), _pad_left(theirs.values, length - new)])
        self.mask = torch.cat([functional.pad(self.mask, (length - old, 0)), functional.pad(mask, (length - new, 0))])
        self.lengths = torch.cat([self.lengths, mask.sum(1)])
        self.rows += rows

    def keep(self, keep: list[int]) -> None:
        """Keep only rows `keep` (in order); padding every kept row has in front is dropped."""
        if not keep:
            self.__init__()
            return
        index = torch.tensor(keep, dtype=torch.long)
        mask = self.mask[index]
        first = int((mask.cumsum(1) == 0).sum(1).min())  # leading columns that are padding in every row
        self.mask, self.lengths = mask[:, first:], self.lengths[index]
        self.rows = [self.rows[i] for i in keep]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]

    def decode_inputs(self, tokens: list[int]) -> dict[str, Any]:
        """Model inputs for one new token per row (`tokens` in row order), with the cache."""
        mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long)], dim=1)
        return {"input_ids": torch.tensor(tokens)[:, None], "attention_mask": mask,
                "position_ids": self.lengths[:, None], "past_key_values": self.cache}

    def advance(self, inputs: dict[str, Any]) -> None:
        """After the decode forward of `inputs`: every row is one token longer."""
        self.mask = inputs["attention_mask"]
        self.lengths = self.lengths + 1


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with spare positions at the end, so a
    decode step writes its key and value in place instead of copying the layer (module docstring).

    `keys` / `values` read as transformers' (`[B, heads, T, d]`, views now); assigning them (`DecodeBatch`
    does when rows join or leave) makes the assigned tensors the buffers, without spare room.
    """

    @classmethod
    def holding(cls, layer: DynamicLayer) -> GrowingLayer:
        """A growing layer with `layer`'s keys and values (an initialised layer of a prefill's cache)."""
        grown = cls()
        grown.dtype, grown.device, grown.is_initialized = layer.dtype, layer.device, True
        grown.keys, grown.values = layer.keys, layer.values
        return grown

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._keys is None else self._keys[:, :, :self._keys_length]

    @keys.setter
    def keys(self, keys: torch.Tensor | None) -> None:  # None: transformers' empty layer
        self._keys, self._keys_length = keys, 0 if keys is None else keys.shape[-2]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._values is None else self._values[:, :, :self._values_length]

    @values.setter
    def values(self, values: torch.Tensor | None) -> None:
        self._values, self._values_length = values, 0 if values is None else values.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self._keys, self._keys_length = _appended(self._keys, self._keys_length, key_states)
        self._values, self._values_length = _appended(self._values, self._values_length, value_states)
        return self.keys, self.values


def _appended(buffer: torch.Tensor, length: int, states: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`states` `[B, h, n, d]` written after the first `length` positions of `buffer` (a new buffer with
    `SPARE_POSITIONS` more room if it is full); returns the buffer and its new length."""
    end = length + states.shape[-2]
    if end > buffer.shape[-2]:
        grown = buffer.new_empty(*buffer.shape[:2], end + SPARE_POSITIONS, buffer.shape[-1])
        grown[:, :, :length] = buffer[:, :, :length]
        buffer = grown
    buffer[:, :, length:end] = states
    return buffer, end


def _pad_left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    """`[B, h, T, d]` -> `[B, h, amount + T, d]`, zeros in front."""
    return functional.pad(tensor, (0, 0, amount, 0)) if amount else tensor
