"""`switchyard model init` and `switchyard generate`: outputs, JSON form, one-line errors (exit 2)."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner

from switchyard.cluster.cli.generate import register
from switchyard.placement.plan import Plan
from switchyard.placement.topology import Topology


@pytest.fixture(scope="module")
def cli() -> click.Group:
    group = click.Group("switchyard")
    register(group)
    return group


@pytest.fixture(scope="module")
def model_dir(cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "qwen3"
    result = CliRunner().invoke(cli, ["model", "init", "--arch", "qwen3-moe", "--size", "tiny", "--out", str(out),
                                      "--skew", "0.5", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "2 MoE layers x 8 experts" in result.output
    return out


def _error(cli, args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_input_is_one_line_exit_2(cli, model_dir, tmp_path):
    base = ["generate", "--max-new-tokens", "2"]
    assert "no config.json" in _error(cli, base + ["--model", str(tmp_path / "none"), "--prompt-ids", "1"])
    assert "outside the vocabulary (512)" in _error(cli, base + ["--model", str(model_dir), "--prompt-ids", "1,600"])
    assert "comma-separated integers" in _error(cli, base + ["--model", str(model_dir), "--prompt-ids", "1,x"])
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(Plan(np.tile(np.arange(4), (3, 1)), Topology(1, 1, 4), 4).to_dict()))
    assert "has 3 layers but the model" in _error(
        cli, base + ["--model", str(model_dir), "--prompt-ids", "1", "--plan", str(plan)])
    assert "--skew" in _error(cli, ["model", "init", "--arch", "qwen3-moe", "--size", "tiny",
                                                         "--out", str(tmp_path / "x"), "--skew", "-1"])
    assert "do not divide" in _error(cli, base + ["--model", str(model_dir), "--prompt-ids", "1", "--nodes", "3"])


def test_generate_needs_model_or_server(cli, model_dir):
    base = ["generate", "--prompt-ids", "1"]
    assert "give --model DIR (serve locally) or --server HOST:PORT" in _error(cli, base)
    assert "not both" in _error(cli, base + ["--model", str(model_dir), "--server", "127.0.0.1:1"])
    remote, local = base + ["--server", "127.0.0.1:1"], base + ["--model", str(model_dir)]
    message = _error(cli, remote + ["--nodes", "2", "--plan", "p.json"])
    assert message == "Error: --nodes, --plan: only without --server"
    assert _error(cli, local + ["--timeout", "1"]) == "Error: --timeout: only with --server"


@pytest.mark.ray
def test_generate_json_on_two_nodes(cli, model_dir, ray_address):
    """On the session's cluster through --address (the ephemeral cluster's start is `serve`'s test's)."""
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    args = ["generate", "--model", str(model_dir), "--max-new-tokens", "6", "--nodes", "2", "--gpus-per-node", "2",
            "--address", ray_address, "--json"]
    for prompt in prompts:
        args += ["--prompt-ids", ",".join(map(str, prompt))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    expected = [model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False)[0, len(p):].tolist()
                for p in prompts]
    assert report["outputs"] == expected
    assert len(report["bytes_per_worker"]) == 4
    assert report["same_node_bytes"] > 0 and report["cross_node_bytes"] > 0
