"""Typed configuration: dataclasses loaded from dicts, YAML files and dotted overrides.

Unknown keys and wrong types are errors that name the key, so a typo in a YAML file or on the
command line never silently falls back to a default.

Usage:
    cfg = load_config(TrainConfig, "recipe.yaml", ["optim.lr=1e-3", "model.n_layers=6"])
    cfg = load_config(TrainConfig, recipe_path("teacher"))   # a recipe shipped in recipes/
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml

__all__ = [
    "RECIPES",
    "ConfigError",
    "check_at_least",
    "from_dict",
    "load_config",
    "parse_overrides",
    "recipe_path",
    "to_dict",
]

T = TypeVar("T")

RECIPES = ("teacher", "fastconformer", "reference-teacher", "demo", "tiny", "prune", "demo-prune")


def recipe_path(name_or_path: str) -> Path:
    """A YAML file path, or the name of a recipe shipped with the package."""
    if name_or_path in RECIPES:
        return Path(str(resources.files("conformer_prune") / "recipes" / f"{name_or_path}.yaml"))
    return Path(name_or_path)


class ConfigError(ValueError):
    """A configuration value or key is not what the dataclass expects."""


def check_at_least(cfg: Any, minimum: float, *names: str, meaning: str = "") -> None:
    """A ValueError ("NAME: expected MINIMUM[ meaning] or more, found VALUE") for the first field
    of `cfg` among `names` below `minimum`; for the dataclasses' ``__post_init__``."""
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            what = f"{minimum} ({meaning})" if meaning else f"{minimum}"
            raise ValueError(f"{name}: expected {what} or more, found {value}")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly coerce) `value` against the annotation `tp`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:  # an optional value (X | None): X's own error names the key
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: expected {tp}, found {value!r}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected one of {get_args(tp)}, found {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, found {len(value)}")
            return tuple(
                _convert(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, found {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, found {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, found {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a plain dict, checking every key and type.

    Args:
        cls: the dataclass type.
        data: its fields; missing ones take the dataclass defaults.
        where: dotted prefix used in error messages.

    Raises:
        ConfigError: for an unknown key or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, found {data!r}")
    prepare = getattr(cls, "prepare_dict", None)
    if prepare is not None:  # a dataclass may expand shorthands, e.g. one width for all layers
        data = prepare(data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{name}' (known keys here: {known})")
        kwargs[key] = _convert(value, hints[key], name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML- and JSON-friendly dict of a (nested) dataclass."""
    out = dataclasses.asdict(cfg)
    return _plain(out)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=1e-3", "model.heads=[4,2]"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({_one_line(err)})") from err
    return nested


def _one_line(err: Exception) -> str:
    """An exception's message on one line (YAML and PyTorch errors span several)."""
    return " ".join(str(err).split())


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load dataclass `cls` from an optional YAML file plus dotted overrides.

    Args:
        cls: the dataclass type.
        path: a YAML file, or None for the defaults.
        overrides: ``KEY=VALUE`` strings applied on top, dotted for nested keys.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid YAML ({_one_line(err)})") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at the top level")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)
