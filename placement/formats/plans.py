"""Plans as JSON (`Plan.to_dict`: `physical_to_logical_map` plus the topology)."""

from __future__ import annotations

import json
from pathlib import Path

from switchyard.placement.formats.files import file_errors, json_value
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
        return plan_of_json(path.read_bytes())


def plan_of_json(text: str | bytes) -> Plan:
    """The plan in JSON `text` (`Plan.to_dict`'s form); `PlacementError` for any other content."""
    return Plan.from_dict(json_value(text))
