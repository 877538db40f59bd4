"""Affinity forks no more planning processes than a container's CPU quota lets run at once.

Kubernetes enforces a pod's CPU limit as a cgroup CPU quota, while the pod still sees every core of
its node in its affinity mask. This runs a planner in a real cgroup with a quota of one CPU, seen from
its own cgroup namespace as from inside a container (`unshare --cgroup --mount`, the cgroup
filesystem mounted again there), on a machine with two or more CPUs. Needs root and `unshare`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchyard.placement.forked import usable_cpus

_PERIOD_US = 100_000
_CHILD = """
from switchyard.placement.forked import usable_cpus
from switchyard.placement.policies import affinity
from switchyard.placement.stats import RoutingStats
from switchyard.placement.synthetic import synthetic_trace
from switchyard.placement.topology import Topology

affinity._FORKED_WORK = 1  # any plan pays for forking: only the CPUs decide
stats = RoutingStats.from_trace(synthetic_trace(3, 16, 2, 512, seed=0))
print(usable_cpus(), affinity.AffinityPolicy(processes=None).process_count(stats, Topology(1, 2, 8)))
"""


def _cpu_controller() -> tuple[Path, str, str]:
    """Where this process's CPU controller is mounted: (mount point, filesystem type, mount options)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        mount_point, fs_type, options = Path(fields[4]), fields[separator + 1], fields[separator + 3]
        if fs_type == "cgroup" and "cpu" in options.split(","):
            return mount_point, fs_type, ",".join(o for o in options.split(",") if o not in ("rw", "ro"))
        if fs_type == "cgroup2" and "cpu" in (mount_point / "cgroup.controllers").read_text().split():
            return mount_point, fs_type, ""
    pytest.skip("no cgroup CPU controller is mounted")


@pytest.fixture
def one_cpu_cgroup() -> Iterator[tuple[Path, Path, str, str]]:
    """A new cgroup limited to one CPU: (its directory, the controller's mount point, type, options)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to run a process in a cgroup namespace")
    if usable_cpus() < 2:
        pytest.skip("needs two or more usable CPUs for a quota of one to make a difference")
    mount_point, fs_type, options = _cpu_controller()
    group = mount_point / f"switchyard-test-{uuid.uuid4().hex[:8]}"
    try:
        if fs_type == "cgroup2":
            (mount_point / "cgroup.subtree_control").write_text("+cpu")
            group.mkdir()
            (group / "cpu.max").write_text(f"{_PERIOD_US} {_PERIOD_US}")
        else:
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(_PERIOD_US))
    except OSError as error:
        if group.exists():
            group.rmdir()
        pytest.skip(f"cannot create a cgroup with a CPU quota here: {error}")
    try:
        yield group, mount_point, fs_type, options
    finally:
        group.rmdir()  # its only process has exited


def test_processes_fit_the_container_cpu_quota(one_cpu_cgroup: tuple[Path, Path, str, str]) -> None:
    group, mount_point, fs_type, options = one_cpu_cgroup
    mount = f"mount -t {fs_type}" + (f" -o {options}" if options else "") + f" none {mount_point}"
    command = ["unshare", "--cgroup", "--mount", "sh", "-c",
               f'umount {mount_point} && {mount} && exec "$0" -c "$1"', sys.executable, _CHILD]
    inside = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                            preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split() == ["1", "1"]  # one CPU to use, so no fork, where the mask holds more
    assert len(os.sched_getaffinity(0)) >= 2
