"""The placement library's one error type.

Everything a user can get wrong (a file, a shape, an id, a topology) raises `PlacementError`, a
`ValueError`, with a message that names the bad value. The CLI turns it into one line and exit code 2.
Internal invariants use `assert`.
"""


class PlacementError(ValueError):
    """Bad placement input: a trace, a plan, a topology or a file that cannot be used as given."""
