"""Every file the placement library reads or writes: traces, statistics, plans and engine exports.

This is the only package of `placement/` that touches files, one module per job: `traces`, `loads`
(statistics), `plans`, `exports`; `files` reads by suffix, in one place (and, for
`.json` and `.pt`, on the content); every failure (a missing or unreadable file, a missing key, a
wrong shape, an id out of range) raises `PlacementError` naming the file. The in-memory converters
(`trace_from_*`, `load_from_*`, `to_*`) are pure, so engines that hand over objects instead of files
use them directly. torch is imported lazily, and only to read `.pt` files.

Formats read:
  `.npz` trace     the canonical format (DESIGN.md, ../shared/traces/README.md): `topk_ids [T, L, k]`,
                   optional `topk_weights [T, L, k]`, `seq_lens [S]`, `num_experts`.
  `.jsonl` trace   the Mixtral sample's records (github Mario928/speculative-moe): one object per
                   (token, layer) with `dataset, problem_id, layer, token_idx, experts, gating_probs`.
  SGLang dumps     `ExpertDistributionRecorder.dump_record` (sglang `srt/eplb/expert_distribution.py`),
                   `.pt` (torch.save) or the same object as `.json`: `per_token` mode gives
                   `{"records": [{"topk_ids_of_layer": [L, n, 8], ...}], "last_physical_to_logical_map"}`,
                   `stat` mode gives `{"logical_count": [..., L, E], ...}`.
  load matrices    `[..., L, E]` tokens per logical expert (`.npy`, `.json` nested lists, `.pt` tensor),
                   like vLLM's EPLB expert load and OLMoE's published counts; leading axes are summed.
"""

from switchyard.placement.formats.exports import (
    EXPORT_FORMATS, export_plan, to_sglang, to_trtllm, to_vllm, trtllm_yaml)
from switchyard.placement.formats.loads import load_from_matrix, load_from_sglang_stat, load_stats
from switchyard.placement.formats.plans import load_plan, save_plan
from switchyard.placement.formats.traces import (
    MIXTRAL_KEYS, load_trace, save_trace, trace_from_mixtral_records, trace_from_npz, trace_from_sglang_dump)

__all__ = ["EXPORT_FORMATS", "MIXTRAL_KEYS", "export_plan", "load_from_matrix", "load_from_sglang_stat",
           "load_plan", "load_stats", "load_trace", "save_plan", "save_trace", "to_sglang", "to_trtllm", "to_vllm",
           "trace_from_mixtral_records", "trace_from_npz", "trace_from_sglang_dump", "trtllm_yaml"]
