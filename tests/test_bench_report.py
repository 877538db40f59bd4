"""The line every benchmark report starts with: the command and the machine the numbers come from."""

from __future__ import annotations

import os

from bench.report import cpu_model, provenance


def test_provenance_names_the_command_and_the_cpu() -> None:
    line = provenance("python -m bench.runtime --out x.md")

    assert line.startswith("Produced by `python -m bench.runtime --out x.md` in one run, ")
    assert f"with {os.cpu_count()} CPU cores ({cpu_model()})" in line
    assert "torch " in line


def test_cpu_model_gives_the_vector_extension_and_the_last_level_cache() -> None:
    described = cpu_model()

    # Linux CI machines report both (/proc/cpuinfo's flags, sysfs's cache sizes).
    assert any(vector in described for vector in ("AVX-512", "AVX2", "no AVX2"))
    assert " MiB" in described
