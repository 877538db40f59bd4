"""Independent pieces of one computation in processes forked from this one (affinity's layers).

A forked child shares the parent's memory as it was at the fork, so neither the function nor its
data are pickled (DeepSeek-V3's pair counts alone are 30 MB): only each piece's result comes back,
through a pipe. The parent computes the first piece itself while the children compute the others.
The children run the function and nothing else, and exit when their piece is sent. Forking needs
the `fork` start method (Linux, macOS); `can_fork` says whether it is there, `usable_cpus` how many
processes can run at once.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import TypeVar

from switchyard.placement.errors import PlacementError

Piece = TypeVar("Piece")
Result = TypeVar("Result")


def can_fork() -> bool:
    """Whether this platform can fork a Python process (`multiprocessing`'s `fork` start method)."""
    return "fork" in multiprocessing.get_all_start_methods()


def usable_cpus() -> int:
    """The CPUs this process can keep busy at once: those its affinity mask allows, capped by its
    container's CPU quota (cgroup v1 or v2, which is how Kubernetes enforces a pod's CPU limit).

    The mask alone counts every core of the host: a pod limited to 2 CPUs on a 64-core node would
    fork a process per layer, which its quota then runs a slice at a time (DeepSeek-V3's 58 layers
    in 58 processes took 5.9 s against 1.7 s in 2, on 2 cores). `loky.cpu_count` reads both, and the
    `LOKY_MAX_CPU_COUNT` environment variable as a further cap.
    """
    # Imported here: loky brings its process-pool machinery (~18 ms of the placement package's ~170 ms
    # import), which only a plan forking by CPU count needs, not every process that imports a policy.
    import loky

    return loky.cpu_count(only_physical_cores=False)


def map_forked(function: Callable[[Piece], Result], pieces: Sequence[Piece]) -> list[Result]:
    """`[function(piece) for piece in pieces]`, each piece but the first in a child process forked
    from this one (one process per piece, this one included).

    `function` must be pure: what a child changes in its copy of memory is lost. An exception in a
    child is raised here (the child's own, where it pickles); a child that dies without a result
    raises `PlacementError`.
    """
    if len(pieces) <= 1:
        return [function(piece) for piece in pieces]
    context = multiprocessing.get_context("fork")
    children = []
    for piece in pieces[1:]:
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_run_piece, args=(function, piece, send), daemon=True)
        child.start()
        send.close()  # the child holds the sending end: the pipe reads EOF if it dies
        children.append((child, receive))
    try:
        results = [function(pieces[0])]
        for child, receive in children:
            try:
                ok, value = receive.recv()
            except EOFError:
                child.join()
                raise PlacementError(f"a forked planning process died (exit code {child.exitcode})") from None
            if not ok:
                raise value
            results.append(value)
    finally:
        for child, receive in children:
            receive.close()
            if child.is_alive():
                child.terminate()
            child.join()
    return results


def _run_piece(function: Callable[[Piece], Result], piece: Piece, send: Connection) -> None:
    """In the child: `function(piece)` sent as `(True, result)`, or `(False, exception)`."""
    try:
        outcome = (True, function(piece))
    except Exception as error:  # noqa: BLE001 - handed to the parent, which raises it
        outcome = (False, error)
    send.send(outcome)
    send.close()
