"""A test bed of Ray nodes in Linux network namespaces, joined by shaped veth links through a bridge.

On one machine, Ray's simulated nodes talk over loopback: "cross-node" traffic has no bandwidth and
no latency of its own. Here every node is a network namespace with its own address, and its only way
out is a veth pair to a bridge that lives in a namespace of its own; `tc` shapes each node's link in
both directions (an htb class at `rate_mbit`, with a netem delay under it where the kernel has
netem). So every byte one node sends another crosses two shaped links, and each link's own counters
(`ip -s link`) say what crossed it.

    with netns_cluster(num_nodes=2, shape=LinkShape(rate_mbit=1000, delay_ms=0.2)) as bed:
        bed.run(0, ["switchyard", "serve", "--address", bed.ray_address, ...])

Layout, all of it made here and removed on exit (even when a step fails):
    sy-<pid>-br   the bridge `br0`, and one veth end `v<i>` per node
    sy-<pid>-n<i> node i: loopback and `eth0` = 198.18.0.<i+1>/24 (the benchmarking range, RFC 2544),
                  a Ray node (`ray start --block`, the head on node 0) with its own --temp-dir
Nothing is added to the root namespace, and no address outside 198.18.0.0/15 is used. Teardown ends
every process inside the namespaces (`ip netns pids`: only this test bed starts processes there, so
no other Ray cluster on the machine is touched), then deletes the namespaces, which removes the veths
and their qdiscs with them.

Needs root and the `ip` and `tc` commands (`unavailable_reason` says what is missing).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SUBNET = "198.18.0"
"""The /24 the nodes live on: inside 198.18.0.0/15, the range reserved for benchmarking networks."""
RAY_PORT = 6379  # each namespace has its own ports, so the default cannot clash with another cluster
# Every process of the test bed's Ray cluster runs with one authentication mode. Left unset, Ray >= 2.5x
# turns token auth on in a process only when ~/.ray/auth_token exists (any local `ray.init()` on the
# machine writes it), and its head and its clients then disagree ("InvalidAuthToken"). The cluster lives
# on private namespaces with 198.18.0.0/15 addresses, so it runs without tokens.
RAY_AUTH_ENV = "RAY_AUTH_MODE=disabled"
STARTUP_TIMEOUT_S = 90.0


class NetnsUnavailable(RuntimeError):
    """The machine cannot host the test bed (not root, no `ip netns`, ...); the message says why."""


@dataclass(frozen=True)
class LinkShape:
    """How every node's link is shaped, in each direction.

    rate_mbit: htb rate in Mbit/s (None: unshaped).  delay_ms: one-way delay added by netem on each
    end of the link (so node to bridge to node adds it twice per direction); 0 for none.
    """

    rate_mbit: float | None = None
    delay_ms: float = 0.0

    def describe(self) -> str:
        if self.rate_mbit is None and not self.delay_ms:
            return "unshaped"
        rate = "no rate limit" if self.rate_mbit is None else f"{self.rate_mbit / 1000:g} Gbit/s"
        return f"{rate}, {self.delay_ms:g} ms delay"


def unavailable_reason() -> str | None:
    """Why the test bed cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for command in ("ip", "tc"):
        if shutil.which(command) is None:
            return f"the `{command}` command (iproute2) is missing"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _tc(namespace: str, *args: str, check: bool = True) -> bool:
    done = subprocess.run(["tc", "-n", namespace, *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`tc -n {namespace} {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.returncode == 0


NO_NETEM_NOTE = ("the requested delay was not applied: this kernel has no netem qdisc "
                 "(CONFIG_NET_SCH_NETEM); links are rate-limited only")


def shape_links(ends: list[tuple[str, str]], shape: LinkShape) -> LinkShape:
    """Shape the egress of every (namespace, device) in `ends` as `shape`; returns the shape applied
    (its delay 0 where the kernel has no netem). Any root process may call it, in any namespace."""
    delay_ok = True
    for namespace, device in ends:
        _tc(namespace, "qdisc", "del", "dev", device, "root", check=False)  # none yet is fine
        if shape.rate_mbit is None and not shape.delay_ms:
            continue
        rate = f"{shape.rate_mbit or 100_000:g}mbit"  # delay only: an htb class no link can fill
        _tc(namespace, "qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "10")
        _tc(namespace, "class", "add", "dev", device, "parent", "1:", "classid", "1:10", "htb",
            "rate", rate, "quantum", "60000")
        if shape.delay_ms and delay_ok:
            delay_ok = _tc(namespace, "qdisc", "add", "dev", device, "parent", "1:10", "handle", "10:",
                           "netem", "delay", f"{shape.delay_ms:g}ms", "limit", "100000", check=False)
    return LinkShape(shape.rate_mbit, shape.delay_ms if delay_ok else 0.0)


class NetnsCluster:
    """Namespaced nodes with a Ray cluster across them; made by `netns_cluster`.

    num_nodes: nodes (node 0 holds the Ray head).  addresses: `[num_nodes]` each node's IPv4 address.
    notes: what the test bed could not do as asked (e.g. a delay on a kernel without netem).
    """

    def __init__(self, num_nodes: int, root: Path) -> None:
        prefix = f"sy-{os.getpid()}-"
        self.num_nodes, self.root = num_nodes, root
        self.bridge = f"{prefix}br"
        self.namespaces = [f"{prefix}n{node}" for node in range(num_nodes)]
        self.addresses = [f"{SUBNET}.{node + 1}" for node in range(num_nodes)]
        self.notes: list[str] = []
        self.shape = LinkShape()
        self._made: list[str] = []  # namespaces created so far, for teardown
        self._processes: list[subprocess.Popen] = []

    @property
    def ray_address(self) -> str:
        """The Ray head's GCS address (`--address` of `ray start`, `switchyard serve`, `ray.init`)."""
        return f"{self.addresses[0]}:{RAY_PORT}"

    # ---- network ----
    def _build_network(self) -> None:
        for namespace in [self.bridge, *self.namespaces]:
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for node, namespace in enumerate(self.namespaces):
            port = f"v{node}"
            _ip("-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("-n", self.bridge, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge, "link", "set", port, "up")
            _ip("-n", namespace, "addr", "add", f"{self.addresses[node]}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")

    @property
    def link_ends(self) -> list[tuple[str, str]]:
        """(namespace, device) of both ends of every node's link: node egress, then bridge egress."""
        return [end for node, namespace in enumerate(self.namespaces)
                for end in ((namespace, "eth0"), (self.bridge, f"v{node}"))]

    def reshape(self, shape: LinkShape) -> None:
        """Shape every link as `shape` from now on (the cluster keeps running)."""
        self.shape = shape_links(self.link_ends, shape)
        if self.shape.delay_ms < shape.delay_ms and NO_NETEM_NOTE not in self.notes:
            self.notes.append(NO_NETEM_NOTE)

    def link_bytes(self, node: int) -> int:
        """Bytes sent plus received on node `node`'s link since it was made (its `eth0` counters)."""
        done = subprocess.run(["ip", "-j", "-s", "-n", self.namespaces[node], "link", "show", "dev", "eth0"],
                              capture_output=True, text=True, check=True)
        stats = json.loads(done.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])

    # ---- processes ----
    def command(self, node: int, argv: Sequence[str]) -> list[str]:
        """`argv` run inside node `node`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[node], "env", RAY_AUTH_ENV, *argv]

    def popen(self, node: int, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `argv` in node `node`'s namespace (ended at teardown if still running)."""
        process = subprocess.Popen(self.command(node, argv), start_new_session=True, **kwargs)
        self._processes.append(process)
        return process

    def run(self, node: int, argv: Sequence[str], timeout_s: float = 300.0, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
        """Run `argv` in node `node`'s namespace to completion; raises with its stderr if it fails."""
        done = subprocess.run(self.command(node, argv), capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} ... in node {node} exited {done.returncode}:\n"
                               f"{done.stderr[-3000:]}")
        return done

    def python(self, node: int, code: str, *args: str, timeout_s: float = 300.0) -> str:
        """Run Python `code` (this interpreter, `sys.argv[1:]` = `args`) in node `node`; its stdout."""
        return self.run(node, [sys.executable, "-c", code, *args], timeout_s).stdout

    def _start_ray(self, cpus_per_node: int, object_store_bytes: int) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        for node in range(self.num_nodes):
            role = (["--head", f"--port={RAY_PORT}", "--include-dashboard=false"] if node == 0
                    else [f"--address={self.ray_address}"])
            self.popen(node, [ray, "start", "--block", *role, f"--node-ip-address={self.addresses[node]}",
                              f"--temp-dir={self.root / f'n{node}'}", f"--num-cpus={cpus_per_node}",
                              f"--object-store-memory={object_store_bytes}", "--disable-usage-stats"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if node == 0:
                self._wait_for_nodes(1)
        self._wait_for_nodes(self.num_nodes)

    def _wait_for_nodes(self, count: int) -> None:
        code = ("import ray,sys,time; ray.init(address=sys.argv[1], log_to_driver=False)\n"
                "deadline = time.time() + float(sys.argv[3])\n"
                "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.time() < deadline:\n"
                "    time.sleep(0.5)\n"
                "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.time() + STARTUP_TIMEOUT_S
        while True:  # the head's GCS may not listen yet: retry the driver until the deadline
            try:
                alive = int(self.python(0, code, self.ray_address, str(count), str(STARTUP_TIMEOUT_S),
                                        timeout_s=STARTUP_TIMEOUT_S + 30).split()[-1])
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.time() > deadline:
                    raise
                time.sleep(1.0)
        if alive < count:
            raise NetnsUnavailable(f"only {alive} of {count} Ray nodes came up in {STARTUP_TIMEOUT_S:g} s")

    def close(self) -> None:
        """End every process in the namespaces, delete the namespaces (veths and qdiscs go with them)."""
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            pids = self._pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + grace
            while pids and time.time() < deadline:
                time.sleep(0.2)
                pids = self._pids()
            if not pids:
                break
        for process in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2.0)
        for namespace in reversed(self._made):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self._made = []
        shutil.rmtree(self.root, ignore_errors=True)

    def _pids(self) -> list[int]:
        pids = []
        for namespace in self._made:
            done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
            pids += [int(pid) for pid in done.stdout.split()]
        return pids


@contextlib.contextmanager
def netns_cluster(num_nodes: int = 2, shape: LinkShape = LinkShape(), cpus_per_node: int = 1,
            object_store_bytes: int = 100 * 2**20) -> Iterator[NetnsCluster]:
    """`num_nodes` namespaced nodes on shaped links with a Ray cluster across them; all removed on exit.

    Raises `NetnsUnavailable` (before making anything) where `unavailable_reason` says so.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsUnavailable(reason)
    if not 1 <= num_nodes <= 254:
        raise ValueError(f"num_nodes must be 1..254, got {num_nodes}")
    bed = NetnsCluster(num_nodes, Path(f"/tmp/sy-netns-{os.getpid()}"))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a killed run still tears down
    try:
        bed._build_network()
        bed.reshape(shape)
        bed._start_ray(cpus_per_node, object_store_bytes)
        yield bed
    finally:
        bed.close()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
