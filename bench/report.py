"""What every benchmark report shares: where and how it was produced, and where it is written."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import torch


def provenance(command: str) -> str:
    """The report's first line: the command, the date and the machine (the numbers depend on them)."""
    return (f"Produced by `{command}` in one run, {datetime.date.today().isoformat()}, on {platform.machine()} "
            f"with {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}.")


def publish(text: str, out: Path | None) -> None:
    """Print the report, and write it to `out` (a markdown file) when given."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
