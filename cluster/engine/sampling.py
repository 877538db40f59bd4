"""Sampling parameters and next-token choice: greedy, or temperature with top-p, seeded per request."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from switchyard.cluster.errors import InvalidRequest


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates.

    max_new_tokens: tokens to generate at most.  temperature: 0 is greedy (argmax).  top_p: nucleus
    mass kept (1 keeps all).  seed: the request's generator seed (sampling only).  stop_ids: token ids
    that end the request (the stop id is included in the output).
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 and finite, got {self.temperature}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))


class SamplingFailed(InvalidRequest):
    """One request's sampling could not choose a token (e.g. its temperature overflows the logits):
    INVALID_ARGUMENT at the gateway, for that request alone."""


def next_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
                ) -> list[int | Exception]:
    """The next token of each row of `logits` `[B, V]`: greedy rows in one argmax, sampled rows one by
    one. A row whose sampling fails gets its exception instead of a token; the other rows are unaffected."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    tokens: list[int | Exception] = []
    for row, (row_params, generator) in enumerate(zip(params, generators, strict=True)):
        if row_params.temperature == 0:
            tokens.append(greedy[row])
            continue
        try:
            tokens.append(next_token(logits[row], row_params, generator))
        except Exception as error:  # noqa: BLE001 - this request fails alone (the engine reports it)
            tokens.append(SamplingFailed(f"sampling failed with temperature {row_params.temperature:g}, "
                                         f"top_p {row_params.top_p:g}: {error}"))
    return tokens


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token from `logits` `[V]` (float32)."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if not torch.isfinite(probs).all():
        raise SamplingFailed(f"temperature {params.temperature:g} leaves no finite probabilities")
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
