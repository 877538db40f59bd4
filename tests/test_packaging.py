"""The project installs both ways: as a wheel, and editable (what `make setup` does).

The top-level folders become `switchyard.<folder>` through setuptools' package-dir mapping; these
tests check that mapping survives a real wheel build and that the venv's editable install imports
from this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPECTED_IN_WHEEL = (
    "switchyard/placement/plan.py",
    "switchyard/placement/policies/eplb.py",
    "switchyard/cluster/cli/main.py",
    "switchyard/workers/__init__.py",
    "switchyard/protos/__init__.py",
    "switchyard/protos/generated/serving_pb2_grpc.py",
    "switchyard/cluster/dashboard/static/index.html",  # package data: the page and the vendored charts
    "switchyard/cluster/dashboard/static/vendor/echarts.min.js",
    "switchyard/cluster/dashboard/static/vendor/echarts-LICENSE",
)


def _run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (so the build leaves nothing in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    # No build isolation: the venv already has the pinned setuptools, and nothing is downloaded.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "-w", root / "dist", source)
    (built,) = (root / "dist").glob("switchyard-*.whl")
    return built


def test_wheel_contains_every_subpackage(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in EXPECTED_IN_WHEEL:
        assert expected in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "switchyard = switchyard.cluster.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_installs_and_imports(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", target, wheel)
    # -S skips site, so the venv's editable-install hook (.pth) cannot answer the import; the venv's
    # site-packages stays reachable for numpy and click, after the wheel's files.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}
    result = _run(sys.executable, "-S", "-c",
                  "import switchyard.placement.plan as m, switchyard.cluster.cli.main as c; print(m.__file__)",
                  env=env, cwd=tmp_path)
    assert Path(result.stdout.strip()).is_relative_to(target)


def test_editable_install_imports_from_the_checkout(tmp_path: Path) -> None:
    probe = "import switchyard.placement.plan as m; print(m.__file__)"
    result = _run(sys.executable, "-c", probe, cwd=tmp_path)
    assert Path(result.stdout.strip()).resolve() == REPO / "placement" / "plan.py"


def test_console_script_runs() -> None:
    script = Path(sys.executable).parent / "switchyard"
    assert script.is_file(), f"{script} missing: is the project installed in this environment?"
    result = _run(script, "--help")
    assert "placement" in result.stdout
