"""Chaos soak: `switchyard serve --nodes 2` under 16 greedy clients while its actors and Redis are hit.

A real `switchyard serve` subprocess (its own 2-node Ray cluster, its own `redis-server` on a private
port that this benchmark starts) serves a tiny Mixtral. Clients loop over a fixed set of prompts with
greedy sampling, so every successful answer must equal the reference taken before the first fault.
Faults, evenly spread over the run: SIGKILL of an engine's process, SIGKILL of an expert worker's,
SIGKILL of redis-server (restarted 10 s later), SIGSTOP of a worker for 20 s (then SIGCONT). Per fault:
the requests that failed after it (with their status codes), the time from the fault until the last
of them (after that every request succeeded), requests that hung past their deadline, wrong tokens.
The resident memory of every process of the service is read at the start, a third of the way in, and at
the end: over the last two thirds (the last 20 minutes of a 30-minute soak) it should stay flat.
`--plan linear` (serve's default: each expert on one worker) or `--plan replicated` (each expert on
both workers: the plan's replicas are the redundancy that serves while a worker is re-created).

    python -m bench.chaos --minutes 10 --out docs/benchmarks/chaos.md
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from bench.ports import free_port
from bench.report import command_line, describe_checkpoint, provenance, publish

PROMPTS = [[1 + i, 5 + 3 * i, 9, 33 + i, 100, 7 * i % 500] for i in range(16)]
DEADLINE_S = 60.0
REDIS_DOWN_S = 10.0
STOP_S = 20.0
RETRY_AFTER_S = 1.0  # a client's pause after a failed request


@dataclass
class Outcome:
    start: float
    end: float
    code: str  # "OK" or the status code's name
    wrong: bool = False


@dataclass
class Fault:
    name: str
    at: float
    outcomes: list[Outcome] = field(default_factory=list)


def _processes(root: psutil.Process) -> dict[str, list[psutil.Process]]:
    """The service's processes by role: serve, gcs_server, raylet, worker, engine, other Ray processes."""
    roles: dict[str, list[psutil.Process]] = collections.defaultdict(list)
    roles["serve"].append(root)
    for child in root.children(recursive=True):
        try:
            name, line = child.name(), " ".join(child.cmdline())
        except psutil.Error:
            continue
        role = (name if name in ("gcs_server", "raylet") else "worker" if "ray::ExpertWorker" in line else
                "engine" if "ray::Engine" in line else "other")
        roles[role].append(child)
    return roles


def _rss_mib(root: psutil.Process) -> dict[str, list[float]]:
    rss: dict[str, list[float]] = {}
    for role, members in _processes(root).items():
        values = []
        for member in members:
            try:
                values.append(member.memory_info().rss / 2**20)
            except psutil.Error:
                continue
        rss[role] = sorted(values)
    return rss


def _actor_pid(root: psutil.Process, role: str) -> int:
    return _processes(root)[role][0].pid


class Clients:
    """`count` threads, each looping over the prompts until `stop`; every call's outcome recorded."""

    def __init__(self, target: str, count: int, new_tokens: int, reference: list[list[int]]) -> None:
        from switchyard.cluster.gateway.client import Client

        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._clients = [Client(target) for _ in range(count)]
        self._threads = [threading.Thread(target=self._loop, args=(client, index, new_tokens, reference),
                                          daemon=True) for index, client in enumerate(self._clients)]
        for thread in self._threads:
            thread.start()

    def _loop(self, client, index: int, new_tokens: int, reference: list[list[int]]) -> None:
        turn = index
        while not self._stop.is_set():
            prompt = turn % len(PROMPTS)
            start = time.monotonic()
            try:
                tokens = list(client.generate(PROMPTS[prompt], max_new_tokens=new_tokens,
                                              timeout_s=DEADLINE_S).token_ids)
                outcome = Outcome(start, time.monotonic(), "OK", tokens != reference[prompt])
            except grpc.RpcError as error:
                outcome = Outcome(start, time.monotonic(), error.code().name)
                time.sleep(RETRY_AFTER_S)  # a failing service is retried, not hammered
            self.outcomes.append(outcome)
            turn += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=DEADLINE_S + 5)
        for client in self._clients:
            client.close()


def _plan_options(model_dir: Path, plan: str, scratch: Path) -> list[str]:
    """serve's `--plan` for `plan`: none for linear, a JSON file holding every expert on both workers."""
    if plan == "linear":
        return []
    import json

    import numpy as np

    from switchyard.placement.plan import Plan
    from switchyard.placement.topology import Topology
    from switchyard.workers.checkpoints import load_spec

    spec = load_spec(model_dir)
    both = Plan(np.tile(np.arange(spec.num_experts), (spec.num_layers, 2)), Topology(2, 1, spec.num_experts),
                spec.num_experts)
    path = scratch / "replicated.json"
    path.write_text(json.dumps(both.to_dict()))
    return ["--plan", str(path)]


def run(model_dir: Path, minutes: float, clients: int, new_tokens: int, plan: str, scratch: Path) -> dict:
    from switchyard.cluster.gateway.client import Client

    redis_port, port = free_port(), free_port()
    redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(scratch)]
    redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    log = open(scratch / "serve.log", "w")
    serve = subprocess.Popen(
        [str(Path(sys.executable).parent / "switchyard"), "serve", "--model", str(model_dir), "--nodes", "2",
         "--port", str(port), "--redis", f"redis://127.0.0.1:{redis_port}", "--deployment", "chaos",
         "--no-dashboard", *_plan_options(model_dir, plan, scratch)], stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    faults: list[Fault] = []
    try:
        with Client(target) as probe:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and serve.poll() is None:
                try:
                    if probe.health() == "SERVING":
                        break
                except grpc.RpcError:
                    pass
                time.sleep(1)
            else:
                raise RuntimeError(f"serve did not come up; see {scratch / 'serve.log'}")
            reference = [list(probe.generate(p, max_new_tokens=new_tokens, timeout_s=DEADLINE_S).token_ids)
                         for p in PROMPTS]
        root = psutil.Process(serve.pid)
        rss_start = _rss_mib(root)
        load = Clients(target, clients, new_tokens, reference)
        begin = time.monotonic()
        total_s = minutes * 60
        rss_third: dict[str, list[float]] = {}
        third = threading.Timer(total_s / 3, lambda: rss_third.update(_rss_mib(root)))
        third.start()
        # The engine goes first: a re-created engine takes minutes to reach its steady memory, so it
        # is warm by the reading a third of the way in; a re-created worker is steady at once.
        schedule = [("engine SIGKILL", 0.12), ("worker SIGKILL", 0.32), ("redis-server SIGKILL", 0.52),
                    (f"worker SIGSTOP {STOP_S:g} s", 0.72)]
        for name, fraction in schedule:
            time.sleep(max(0.0, begin + fraction * total_s - time.monotonic()))
            fault = Fault(name, time.monotonic())
            faults.append(fault)
            print(f"{fault.at - begin:7.1f} s  {name}", file=sys.stderr, flush=True)
            if name.startswith("worker SIGKILL"):
                os.kill(_actor_pid(root, "worker"), signal.SIGKILL)
            elif name.startswith("engine"):
                os.kill(_actor_pid(root, "engine"), signal.SIGKILL)
            elif name.startswith("redis"):
                redis.kill()
                redis.wait()
                time.sleep(REDIS_DOWN_S)
                redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
            else:
                pid = _actor_pid(root, "worker")
                os.kill(pid, signal.SIGSTOP)
                time.sleep(STOP_S)
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:  # the supervisor replaced it (ray.kill) meanwhile
                    pass
        time.sleep(max(0.0, begin + total_s - time.monotonic()))
        load.stop()
        third.join()
        rss_end = _rss_mib(root)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
        redis.kill()
        log.close()
    outcomes = sorted(load.outcomes, key=lambda o: o.start)
    for index, fault in enumerate(faults):
        until = faults[index + 1].at if index + 1 < len(faults) else float("inf")
        fault.outcomes = [o for o in outcomes if fault.at <= o.end < until]
    before = [o for o in outcomes if o.end < faults[0].at]
    return {"minutes": minutes, "clients": clients, "new_tokens": new_tokens, "plan": plan, "outcomes": outcomes,
            "faults": faults, "before": before, "rss_start": rss_start, "rss_third": rss_third, "rss_end": rss_end,
            "begin": begin}


def render(report: dict, command: str, spec_line: str) -> tuple[str, bool]:
    outcomes, faults = report["outcomes"], report["faults"]
    ok = sum(o.code == "OK" for o in outcomes)
    wrong = sum(o.wrong for o in outcomes)
    hung = sum(o.code == "DEADLINE_EXCEEDED" for o in outcomes)
    share = ok / max(len(outcomes), 1)
    lines = [f"# Chaos soak ({report['minutes']:g} minutes)", "", provenance(command), "", spec_line + ".", "",
             f"`switchyard serve --nodes 2` (one expert worker and one engine per node, {report['plan']} plan, a private "
             f"redis-server), {report['clients']} clients in a loop, greedy, {report['new_tokens']} new tokens, "
             f"deadline {DEADLINE_S:g} s; a client pauses {RETRY_AFTER_S:g} s after a failed request.", "",
             f"Requests: {len(outcomes)}, succeeded {ok} ({share:.1%}), wrong tokens {wrong}, hung past the "
             f"deadline {hung}; before the first fault {sum(o.code != 'OK' for o in report['before'])} failed.", "",
             "| fault | at (s) | requests until the next fault | failed (codes) | recovered after (s) |",
             "| ----- | -----: | ----------------------------: | -------------- | ------------------: |"]
    recoveries = []
    for fault in faults:
        failed = [o for o in fault.outcomes if o.code != "OK"]
        codes = collections.Counter(o.code for o in failed)
        recovered = max((o.end for o in failed), default=fault.at) - fault.at
        recoveries.append(recovered)
        lines.append(f"| {fault.name} | {fault.at - report['begin']:.0f} | {len(fault.outcomes)} | {len(failed)} "
                     f"({', '.join(f'{c} {n}' for c, n in codes.most_common()) or '-'}) | {recovered:.1f} |")
    lines += ["", "\"Recovered after\": from the fault to the end of the last request that failed after it; every "
              "request that ended later succeeded. A SIGSTOP fault's clock starts when the process is stopped.", "",
              "Resident memory (MiB) of every process of the service, at the start, a third of the way in and at "
              "the end of the soak; the change is of each role's total over the last two thirds (a re-created "
              "actor is a new process, counted in its role):", "",
              "| process | start | after a third | end | change over the last two thirds |",
              "| ------- | ----- | ------------- | --- | ------------------------------: |"]
    grown = []
    for role in sorted(set(report["rss_start"]) | set(report["rss_end"])):
        start, third, end = (report[key].get(role, []) for key in ("rss_start", "rss_third", "rss_end"))
        change = sum(end) / sum(third) - 1 if sum(third) else float("nan")
        if not abs(change) <= 0.10:
            grown.append(role)
        cells = [", ".join(f"{v:.0f}" for v in values) for values in (start, third, end)]
        lines.append(f"| {role} | {' | '.join(cells)} | {change:+.1%} |")
    passed = share >= 0.97 and wrong == 0 and hung == 0 and all(r < 30 for r in recoveries)
    lines += ["", f"Targets: at least 97% succeed, no wrong tokens, no hang, recovery within 30 s of each fault: "
              f"{'met' if passed else 'NOT met'}. Memory of every role flat within 10% over the last two thirds: "
              f"{'met' if not grown else 'NOT met (' + ', '.join(grown) + ')'}."]
    return "\n".join(lines), passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--plan", choices=("linear", "replicated"), default="linear")
    parser.add_argument("--out", type=Path, help="Markdown file to write, e.g. docs/benchmarks/chaos.md.")
    args = parser.parse_args()
    from switchyard.workers.checkpoints import init_checkpoint, load_spec

    with tempfile.TemporaryDirectory(prefix="switchyard-chaos-") as scratch:
        model_dir = init_checkpoint("mixtral", "tiny", Path(scratch) / "mixtral-tiny", skew=1.0)
        report = run(model_dir, args.minutes, args.clients, args.new_tokens, args.plan, Path(scratch))
        text, passed = render(report, command_line("bench.chaos"), describe_checkpoint(load_spec(model_dir)))
    publish(text, args.out)
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
