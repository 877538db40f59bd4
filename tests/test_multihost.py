"""Two Ray nodes in network namespaces, joined by a shaped link (`bench.netns`): `switchyard serve` on
the head's namespace serves a client end to end over a real link.

Checks: the generated tokens equal transformers' single-process greedy ones, and the cross-node bytes
that the engines' traffic counters report agree within 10% with what node 1's link counted.

How the link's bytes are compared (node 1's `eth0` carries every byte between the nodes exactly once,
in one direction or the other, so its rx + tx is the cross-node traffic): Ray exchanges control
messages all the time (heartbeats, resource reports, the gateway's statistics publisher), so the
link's bytes over an idle spell with the server up give a baseline rate; the run's link bytes minus
that rate times the run's length are what the request added. The counters count payload only
(hidden states, slots and weights out, hidden states back); the link adds Ray's per-call framing and
TCP/IP headers, which the long prompts below make small beside the payload. The client runs in the
head's namespace beside the gateway, so its own gRPC traffic does not cross the link.

Needs root and `ip netns`; deselect with `-m "not netns"`. Runs under a minute here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from bench.netns import LinkShape, netns_cluster, unavailable_reason
from switchyard.workers.checkpoints import init_checkpoint

pytestmark = [pytest.mark.netns, pytest.mark.ray,
              pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]

PORT = 50061
NEW_TOKENS = 4
PROMPT_LEN = 64
NUM_PROMPTS = 16
IDLE_S = 6.0

CLIENT = """
import json, sys, time
import grpc
from switchyard.cluster.gateway.client import Client
target, prompts, new_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])

def serving(client):
    try:
        return client.health() == "SERVING"
    except grpc.RpcError:  # not listening yet
        return False

with Client(target, timeout_s=120) as client:
    deadline = time.time() + 120
    while not serving(client):
        assert time.time() < deadline, "the gateway did not become ready"
        time.sleep(0.5)
    if prompts:
        results = client.generate_batch(prompts, max_new_tokens=new_tokens)
        tokens = [list(r.token_ids) for r in results]
    else:
        tokens = []
    traffic = client.stats().traffic
    print(json.dumps({"tokens": tokens, "cross_node_bytes": traffic.cross_node_bytes,
                      "same_node_bytes": traffic.same_node_bytes}))
"""


def _reference(model_dir, prompts: list[list[int]]) -> list[list[int]]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        out = model.generate(torch.tensor(prompts), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False)
    return out[:, PROMPT_LEN:].tolist()


def test_two_namespaced_nodes_serve_end_to_end(tmp_path):
    model_dir = init_checkpoint("mixtral", "tiny", tmp_path / "mixtral-tiny", skew=1.0)
    prompts = np.random.default_rng(0).integers(0, 512, size=(NUM_PROMPTS, PROMPT_LEN)).tolist()
    expected = _reference(model_dir, prompts)
    with netns_cluster(2, LinkShape(rate_mbit=1000, delay_ms=0.2)) as bed:
        server = bed.popen(0, [str(Path(sys.executable).with_name("switchyard")), "serve", "--model", str(model_dir), "--nodes", "2",
                               "--address", bed.ray_address, "--host", bed.addresses[0], "--port", str(PORT),
                               "--no-dashboard"])
        target = f"{bed.addresses[0]}:{PORT}"

        def client(batch: list[list[int]]) -> dict:
            return json.loads(bed.python(0, CLIENT, target, json.dumps(batch), str(NEW_TOKENS)).splitlines()[-1])

        client([])  # waits until the gateway serves
        assert server.poll() is None
        idle_start, idle_bytes = time.monotonic(), bed.link_bytes(1)
        time.sleep(IDLE_S)
        idle_rate = (bed.link_bytes(1) - idle_bytes) / (time.monotonic() - idle_start)
        start, before = time.monotonic(), bed.link_bytes(1)
        report = client(prompts)
        link = bed.link_bytes(1) - before - idle_rate * (time.monotonic() - start)

    assert report["tokens"] == expected
    counted = report["cross_node_bytes"]
    assert counted > 0 and report["same_node_bytes"] > 0
    assert abs(link / counted - 1) < 0.10, f"link {link:.0f} B vs counters {counted} B (idle {idle_rate:.0f} B/s)"
