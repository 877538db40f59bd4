"""`switchyard.placement` stays pure: it imports with Ray, gRPC and torch blocked (STYLE.md, Do 1)."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = ("ray", "grpc", "torch")

# Runs in a fresh interpreter: a module set to None in sys.modules makes `import` of it fail.
_PROBE = f"""
import importlib, pkgutil, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
import switchyard.placement as package
names = [info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
assert all(sys.modules[name] is None for name in {BLOCKED!r}), "a blocked module was replaced"
print("\\n".join(names))
"""


def test_placement_imports_without_ray_grpc_or_torch() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = set(result.stdout.split())
    # The probe must have walked the whole package, not an empty one.
    for module in ("plan", "trace", "topology", "stats", "formats", "evaluate", "compare", "policies.eplb"):
        assert f"switchyard.placement.{module}" in imported


def test_cluster_package_imports_cheaply_and_exports_its_names_lazily() -> None:
    probe = ("import sys, switchyard.cluster as cluster\n"
             "assert not {'ray', 'grpc', 'torch'} & set(sys.modules), 'imported at once'\n"
             "assert callable(cluster.open_state_store) and cluster.Client.__name__ == 'Client'\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
