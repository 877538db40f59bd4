"""The checks of one request against a model, written once: the engine, the gateway and the CLI call them.

Bad input raises `InvalidRequest` (INVALID_ARGUMENT at the gateway, exit code 2 in the CLI) naming the
first problem.
"""

from __future__ import annotations

from collections.abc import Sequence

from switchyard.cluster.engine.sampling import SamplingParams
from switchyard.cluster.errors import InvalidRequest


def check_prompt(prompt: Sequence[int], vocab_size: int, max_context: int | None = None,
                 max_new_tokens: int = 0) -> list[int]:
    """`prompt` as a list of ints, or `InvalidRequest`: empty, an id outside `[0, vocab_size)`, or
    `len(prompt) + max_new_tokens` beyond `max_context` (None: not checked)."""
    ids = [int(token) for token in prompt]
    if not ids:
        raise InvalidRequest("the prompt is empty: send at least one token id")
    for token in ids:
        if not 0 <= token < vocab_size:
            raise InvalidRequest(f"token id {token} is outside the vocabulary ({vocab_size})")
    if max_context is not None and len(ids) + max_new_tokens > max_context:
        raise InvalidRequest(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context of {max_context} tokens")
    return ids


def check_stop_ids(params: SamplingParams, vocab_size: int) -> None:
    """`InvalidRequest` when a stop id is outside `[0, vocab_size)`: it could never end the request."""
    for stop_id in params.stop_ids:
        if stop_id >= vocab_size:
            raise InvalidRequest(f"stop id {stop_id} is outside the vocabulary ({vocab_size})")


def make_params(max_new_tokens: int, temperature: float, top_p: float, seed: int,
                stop_ids: Sequence[int]) -> SamplingParams:
    """`SamplingParams`, with its `ValueError` turned into `InvalidRequest` (every field is checked
    there: finite, in range)."""
    try:
        return SamplingParams(max_new_tokens, temperature, top_p, seed, tuple(stop_ids))
    except ValueError as error:
        raise InvalidRequest(str(error)) from None
