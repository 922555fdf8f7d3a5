"""Functions that `tests/test_benchmark_jobs.py` runs in spawned processes: a module of its own, so
that a child imports nothing heavy to find them."""

from __future__ import annotations

import os
import signal
import time
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


def sleeps(pid_file: Path) -> None:
    """Writes its process id, then sleeps (a run that trains on)."""
    pid_file.write_text(str(os.getpid()))
    while True:
        time.sleep(1)


if __name__ == "__main__":  # a benchmark whose run sleeps in a fresh process
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import in_fresh_process

    in_fresh_process(sleeps, Path(sys.argv[1]))
