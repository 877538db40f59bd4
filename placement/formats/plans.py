"""Plans as JSON (`Plan.to_dict`: `physical_to_logical_map` plus the topology)."""

from __future__ import annotations

import json
from pathlib import Path

from switchyard.placement.formats.files import file_errors
from switchyard.placement.plan import Plan


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write `plan` as JSON (`Plan.to_dict`: `physical_to_logical_map` plus the topology)."""
    path = Path(path)
    with file_errors(path, "write"):
        path.write_text(json.dumps(plan.to_dict()) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read a plan written by `save_plan`."""
    path = Path(path)
    with file_errors(path, "read"):
        return Plan.from_dict(json.loads(path.read_text()))
