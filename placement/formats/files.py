"""Reading a file by its suffix, in one place, and turning every failure into one `PlacementError`.

The readers of `traces` and `loads` call `read_content`; torch is imported lazily, only for `.pt`.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from switchyard.placement.errors import PlacementError


def read_content(path: Path, suffixes: tuple[str, ...], what: str = "") -> Any:
    """The content of `path`, read by its suffix: `.npz` a dict of arrays, `.jsonl` a list of records,
    `.npy` an array, `.json` its value, `.pt` the object with tensors as numpy arrays. A suffix outside
    `suffixes` is a `PlacementError` naming the accepted ones (`what`: "trace " in "unknown trace suffix")."""
    if path.suffix not in suffixes:
        raise PlacementError(f"unknown {what}suffix {path.suffix!r}; expected {', '.join(suffixes[:-1])} or "
                             f"{suffixes[-1]}")
    return _READERS[path.suffix](path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise PlacementError("holds a single array, not an .npz archive of named arrays")
    with data:
        return {name: data[name] for name in data.files}


def _read_jsonl(path: Path) -> list[Any]:
    lines = path.read_text().splitlines()
    return [_json_line(line, number) for number, line in enumerate(lines, 1) if line.strip()]


def _json_line(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError; too deep a nesting
        raise PlacementError(f"line {number} is not JSON: {error}") from None


def json_value(text: str | bytes) -> Any:
    """The value of JSON `text`; a `PlacementError` for anything `json.loads` refuses, including what it
    refuses with a `RecursionError` (nesting deeper than Python's recursion limit) or a `ValueError`
    (an integer of more than 4300 digits, bad UTF-8)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PlacementError(f"unreadable content: not JSON ({error})") from None
    except RecursionError:
        raise PlacementError("unreadable content: JSON nested too deeply") from None
    except ValueError as error:
        raise PlacementError(f"unreadable content: not usable JSON ({error})") from None


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _read_json(path: Path) -> Any:
    return json_value(path.read_bytes())


def _read_torch(path: Path) -> Any:
    """A `.pt` file's object with tensors turned into numpy arrays."""
    try:
        import torch  # only .pt files need torch; placement/ stays importable without it
    except ImportError:
        raise PlacementError("reading .pt files needs PyTorch, which is not installed") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as error:
        raise PlacementError(f"not a loadable PyTorch file: {error}") from None

    def to_numpy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.numpy()
        if isinstance(value, Mapping):
            return {key: to_numpy(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [to_numpy(item) for item in value]
        return value

    return to_numpy(content)


_READERS: dict[str, Callable[[Path], Any]] = {".npz": _read_npz, ".jsonl": _read_jsonl, ".npy": _read_npy,
                                              ".json": _read_json, ".pt": _read_torch}


@contextmanager
def file_errors(path: Path, action: str) -> Iterator[None]:
    """Turn every way reading or writing `path` can fail into one `PlacementError` naming it."""
    try:
        yield
    except PlacementError as error:
        raise PlacementError(f"{path}: {error}") from None
    except FileNotFoundError:
        raise PlacementError(f"{path}: no such file or directory") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise PlacementError(f"cannot {action} {path}: {error}") from None
    except ValueError as error:  # bad JSON, bad UTF-8, numpy's format and pickle refusals
        raise PlacementError(f"{path}: unreadable content: {error}") from None
