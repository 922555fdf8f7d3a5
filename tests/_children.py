"""Functions that `tests/test_benchmark_jobs.py` runs in spawned processes: a module of its own, so
that a child imports nothing heavy to find them."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def pid_after_dying(marker: Path, deaths: int) -> int:
    """Killed (SIGKILL, as the kernel's out-of-memory killer does) the first `deaths` times it is
    called, one line in `marker` each; then the process id."""
    marker.touch()
    if len(marker.read_text().splitlines()) < deaths:
        with marker.open("a") as f:
            f.write("died\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def fails(message: str) -> None:
    raise ValueError(message)
