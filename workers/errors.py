"""The workers package's one error type.

A checkpoint that cannot be served as given (missing directory, unsupported architecture, missing
expert tensors) raises `CheckpointError`, a `ValueError` with a message naming the bad value; the CLI
turns it into one line and exit code 2.
"""

from switchyard.placement.errors import SwitchyardError


class CheckpointError(SwitchyardError, ValueError):
    """A model directory or checkpoint that cannot be used as given."""
