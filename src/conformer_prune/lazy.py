"""Lazy package attributes (PEP 562): a package re-exports names without importing their modules
until first use, so that its PyTorch-free modules load without PyTorch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports ``package.<home[name]>`` on first access of `name`."""

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home[name]}"), name)

    return __getattr__
