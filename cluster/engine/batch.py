"""The decode batch: every active request's KV cache in one left-padded transformers `DynamicCache`.

transformers' attention takes a batch of sequences of different lengths as a left-padded cache with
a `[B, T]` attention mask (0 on padding) and per-row position ids, so one forward decodes every active
request. Requests join after a prefill forward of their own (`prefill_inputs`: new prompts left-padded
together) and leave when done; padding shared by every row is trimmed when a request leaves. Keys and
values are `[B, heads, T, head_dim]` per layer; DeepSeek-V2's keys and values differ in `head_dim`,
which nothing here depends on.

Padding costs attention work only: the engine sends only real tokens to the expert workers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional
from transformers import DynamicCache


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


def _pad_left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    """`[B, h, T, d]` -> `[B, h, amount + T, d]`, zeros in front."""
    return functional.pad(tensor, (0, 0, amount, 0)) if amount else tensor
