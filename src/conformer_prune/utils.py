"""Small shared helpers: atomic writes, device choice and the CPU allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_dir",
    "check_output_file",
    "keep_freed_memory",
    "load_state",
    "log_size",
    "resolve_device",
    "restore",
    "truncate_log",
    "write_json",
]


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_writable(path: Path) -> None:
    """The nearest existing folder at or above `path` must be a writable directory."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot write {path}: {ancestor} is a file, expected a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {ancestor} is not writable")


def check_output_file(path: str | Path, force: bool = False) -> None:
    """Check, before any work, that the output file `path` can be written: refuse an existing
    file unless `force`, a directory, and a place that is not writable.

    Raises:
        FileExistsError: `path` exists and `force` is not set.
        ValueError: `path` is a directory or its folder cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {path} is a directory; expected a file path")
    if path.exists() and not force:
        raise FileExistsError(f"output {path} exists; pass --force to overwrite it")
    _check_writable(path.parent)


def check_output_dir(path: str | Path) -> None:
    """Check, before any work, that the run directory `path` is a directory or can be made.

    Raises:
        ValueError: `path` is a file, or it cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"run directory {path} is a file; expected a directory")
    _check_writable(path)


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` that never leaves a half-written file behind."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _one_line(err: BaseException, limit: int = 300) -> str:
    return " ".join(str(err).split())[:limit]


def load_state(path: str | Path, keys: list[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A run's state file (``weights_only``) holding at least `keys`.

    Raises:
        ValueError: the file is truncated, not a PyTorch file, or not a state of this kind.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path} could not be read ({_one_line(err)}); expected a state file") from err
    missing = sorted(set(keys) - set(state)) if isinstance(state, dict) else keys
    if missing:
        raise ValueError(f"{path} is not a state file of this kind; it lacks {missing}")
    return state


def restore(path: str | Path, state: dict[str, Any], **targets: Any) -> None:
    """``target.load_state_dict(state[name])`` for each named target (a module, an optimizer, a
    scheduler); a state that does not fit is a ValueError naming `path`."""
    for name, target in targets.items():
        try:
            target.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}: its {name} does not fit this run's ({type(err).__name__}: {_one_line(err)}); "
                "resume with the run's own config (leave out --config and --set)"
            ) from err


def log_size(path: str | Path) -> int:
    """The size of a run's log in bytes (0 before it exists), recorded in each state file."""
    path = Path(path)
    return path.stat().st_size if path.exists() else 0


def truncate_log(path: str | Path, size: int | None) -> None:
    """Cut a run's log back to the `size` its state file recorded: lines written after the state
    (an epoch whose state was never saved) are dropped, so a resumed run's log is the log of an
    uninterrupted one. `size` None (a state from before this was recorded) keeps the log."""
    path = Path(path)
    if size is not None and path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as log_file:
            log_file.truncate(size)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory this process frees for its next allocations instead of
    handing it back to the kernel; returns whether it applied (not off glibc).

    glibc maps every block above 32 MB afresh and unmaps it when freed, so each training step
    paid the kernel to map and zero the front end's activation maps again (16 x 144 x 251 x 40:
    92 MB in fp32, 46 MB in bf16), for the forward pass, its gradients and the teacher's.
    `benchmarks/allocator.py` measures it on the reference pruning step in pairs of new processes
    (docs/benchmark.md: fp32, 1 thread, AMD EPYC): 47-126k page faults and 0.24-0.39 s of system
    time per step with glibc's defaults, none with this; the step at 0.878 of the time (median of
    six pairs' ratios, 0.71-1.02), and the weights bitwise the same. The price: the process keeps
    its peak memory until it exits (2.06-2.13 GB against 2.00-2.13 GB there), and over a long run
    of varying batch shapes its heap may fragment and grow."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt (macOS)
        return False
    # no block is mapped on its own, and the heap is never trimmed (the limit is a C int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
