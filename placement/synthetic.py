"""Synthetic routing traces with the structure real MoE routing has: hot experts and co-activation.

Real traces (../shared/traces) are few and small; tests and benchmarks also need traces of any
shape (DeepSeek-V3's 58 layers x 256 experts x top-8) with knobs for how skewed and how clustered
routing is. The generator is small on purpose: each knob does one thing.

The model, per layer l:
  * popularity: expert weights follow a Zipf law, `1 / rank ** skew`, over a random order of the
    experts (so the hot experts differ per layer and are not the low ids);
  * clusters: the experts are split into `num_clusters` groups over another random order (so a
    linear placement, which puts consecutive ids together, does not line up with them by accident);
  * every token has a topic (one cluster index) per layer. Its layer-0 topic is its sequence's
    topic with probability `sequence_affinity`, else random; at each next layer it keeps its topic
    with probability `layer_correlation`, else draws a new one;
  * each of its k picks comes from its topic's cluster with probability `affinity`, else from all
    experts, drawn by popularity without replacement.
With the default `affinity=0.8` a top-6 token takes about 5 of its 6 experts from one cluster of
about 12 experts, so placing clusters together cuts the GPUs a token touches, which load-only
placement cannot see: on 8 GPUs (E = 64) a token's experts sit on about 4.5 GPUs under a linear
placement and about 2.9 under a simple greedy co-activation grouping, close to the real ESFT
traces (4.6 and 3.1).
"""

from __future__ import annotations

import numpy as np

from switchyard.placement.errors import PlacementError, positive_int, unit_interval
from switchyard.placement.trace import RoutingTrace


def synthetic_trace(
    num_layers: int,
    num_experts: int,
    top_k: int,
    num_tokens: int,
    *,
    seq_len: int = 64,
    skew: float = 1.0,
    num_clusters: int | None = None,
    affinity: float = 0.8,
    layer_correlation: float = 0.5,
    sequence_affinity: float = 0.5,
    seed: int | np.random.Generator = 0,
) -> RoutingTrace:
    """A deterministic (for a seed) trace of `num_tokens` tokens in sequences of `seq_len`.

    num_layers, num_experts, top_k: L, E and k of the model.
    num_tokens: T; the last sequence is shorter when `seq_len` does not divide it.
    skew: Zipf exponent of expert popularity (weight `1 / rank ** skew`); 0 = all experts equally
        popular. With the other defaults and E = 64, k = 6, skew 1 makes the busiest expert about
        4.5x the mean load, within the 2-7.7x of the real ESFT traces.
    num_clusters: groups of experts that tokens pick together; default `E // (2 * k)` (at least 1),
        clusters of about 2k experts. 1 means no cluster structure.
    affinity: probability that each pick comes from the token's topic cluster (0 = picks ignore
        clusters, so co-activation is only what popularity implies).
    layer_correlation: probability that a token keeps its topic from one layer to the next
        (0 = independent layers, 1 = the same cluster index at every layer).
    sequence_affinity: probability that a token starts on its sequence's topic (tokens of one
        sequence route alike), else on a random one.
    seed: an int seed or a `np.random.Generator`.
    Returns a `RoutingTrace` without gate weights; each token's k experts are distinct and in
    descending order of their (sampled) score, like a router's top-k.
    """
    for name, value in (("num_layers", num_layers), ("num_experts", num_experts), ("top_k", top_k),
                        ("num_tokens", num_tokens), ("seq_len", seq_len)):
        positive_int(name, value)
    if top_k > num_experts:
        raise PlacementError(f"top_k {top_k} exceeds the {num_experts} experts")
    if num_clusters is None:
        num_clusters = max(1, num_experts // (2 * top_k))
    if not 1 <= num_clusters <= num_experts:
        raise PlacementError(f"num_clusters must be in [1, {num_experts}], got {num_clusters!r}")
    if not skew >= 0:
        raise PlacementError(f"skew must be non-negative, got {skew!r}")
    for name, value in (("affinity", affinity), ("layer_correlation", layer_correlation),
                        ("sequence_affinity", sequence_affinity)):
        unit_interval(name, value)
    rng = np.random.default_rng(seed)

    seq_lens = np.full(num_tokens // seq_len, seq_len, dtype=np.int64)
    if num_tokens % seq_len:
        seq_lens = np.append(seq_lens, num_tokens % seq_len)
    sequence_topic = rng.integers(num_clusters, size=len(seq_lens))
    topic = np.where(rng.random(num_tokens) < sequence_affinity,
                     np.repeat(sequence_topic, seq_lens), rng.integers(num_clusters, size=num_tokens))

    ids = np.empty((num_tokens, num_layers, top_k), dtype=np.int64)
    ranks = np.arange(1, num_experts + 1, dtype=np.float64)
    width = max(-(-num_experts // num_clusters), top_k)  # experts per cluster, padded to at least k
    for layer in range(num_layers):
        if layer:
            redraw = rng.random(num_tokens) >= layer_correlation
            topic = np.where(redraw, rng.integers(num_clusters, size=num_tokens), topic)
        popularity = np.empty(num_experts)
        popularity[rng.permutation(num_experts)] = ranks ** -skew
        # Cluster c holds order[c], order[c + C], ...: sizes differ by at most one. [C, width], -1 pad.
        order = np.full(width * num_clusters, -1, dtype=np.int64)
        order[:num_experts] = rng.permutation(num_experts)
        members = order.reshape(width, num_clusters).T
        ids[:, layer] = _pick(rng, popularity, members[topic], top_k, affinity)
    return RoutingTrace(ids, seq_lens, num_experts)


def _pick(rng: np.random.Generator, popularity: np.ndarray, cluster: np.ndarray, top_k: int,
          affinity: float) -> np.ndarray:
    """`[T, k]` distinct experts per token: m ~ Binomial(k, affinity) of them (at most the cluster's
    size) from its cluster, the other k - m from all experts not yet picked, each draw by popularity
    without replacement; in descending order of score, like a router's top-k.

    popularity: `[E]` positive weights. cluster: `[T, M]` int64, the experts of each token's topic
    cluster, -1 padded, M >= k.
    Exponential race: with keys `Exp(1) / weight`, the smallest keys are a weighted sample without
    replacement (float32 keeps this cheap at DeepSeek-V3 scale).
    """
    num_tokens, num_experts = len(cluster), len(popularity)
    rows = np.arange(num_tokens)[:, None]
    keys = rng.standard_exponential(size=(num_tokens, num_experts), dtype=np.float32)
    keys /= popularity.astype(np.float32)
    cluster_keys = np.where(cluster >= 0, keys[rows, np.maximum(cluster, 0)], np.inf)
    best = np.argsort(cluster_keys, axis=1)[:, :top_k]
    inside, inside_keys = np.take_along_axis(cluster, best, 1), np.take_along_axis(cluster_keys, best, 1)
    from_cluster = np.minimum(rng.binomial(top_k, affinity, size=num_tokens), (cluster >= 0).sum(axis=1))
    rank = np.arange(top_k)
    taken = rank < from_cluster[:, None]
    keys[np.nonzero(taken)[0], inside[taken]] = np.inf  # picked already: out of the second draw
    outside = np.argpartition(keys, top_k - 1, axis=1)[:, :top_k]
    outside_keys = np.take_along_axis(keys, outside, 1)
    outside = np.take_along_axis(outside, np.argsort(outside_keys, axis=1), 1)
    take = np.concatenate([taken, rank < (top_k - from_cluster)[:, None]], axis=1)
    picked = np.concatenate([inside, outside], axis=1)[take].reshape(num_tokens, top_k)
    scores = np.concatenate([inside_keys, np.sort(outside_keys, axis=1)], axis=1)[take]
    return np.take_along_axis(picked, np.argsort(scores.reshape(num_tokens, top_k), axis=1), 1)
