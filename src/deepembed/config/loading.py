"""Loading a RunConfig: YAML files and `section.key=value` overrides, checked key by key
against the schema, and writing the resolved config back."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from deepembed.config.schema import RunConfig
from deepembed.errors import ConfigError
from deepembed.io import reading


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation` or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_value(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {value!r} is not a valid {annotation}")
    if origin is type(None):
        if value is None:
            return None
    elif origin is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif origin is bool or origin is str:
        if isinstance(value, origin):
            return value
    elif origin is list:
        if isinstance(value, list | tuple):
            (item_type,) = typing.get_args(annotation) or (Any,)
            return [_check_value(f"{key}[]", v, item_type) for v in value]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif origin is Any:
        return value
    expected = getattr(origin, "__name__", str(origin))
    raise ConfigError(f"config key {key!r}: expected {expected}, got {value!r}")


# keys of earlier versions: what replaced them
REMOVED = {
    "data.transform": "preprocessing now comes from the model: set model.backbone and "
    "model.image_size (the model directory records its whole preprocessing)",
}


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in REMOVED:
            raise ConfigError(f"config key {full!r} was removed: {REMOVED[full]}")
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; known: {', '.join(sorted(names))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, f"{full}.")
        else:
            kwargs[key] = _check_value(full, value, hint)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (for YAML and JSON)."""
    return dataclasses.asdict(config)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set data["a"]["b"] = value for dotted key "a.b", creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {dotted!r}: {part!r} is not a section")
        node = child
    node[last] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ["train.epochs=2", "loss.params.margin=0.1"] into nested dicts (YAML values)."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from exc
        _set_path(data, key.strip(), value)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `extra` wins. Free-form `params` dicts merge key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# (section, component key, its params key): overriding the component drops the file's params
OWNED_PARAMS = (
    ("loss", "name", "params"),
    ("miner", "name", "params"),
    ("model", "backbone", "backbone_params"),
    ("model", "pool", "pool_params"),
)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- overrides, validated into a RunConfig.

    Overriding loss.name, miner.name, model.backbone or model.pool to another component drops
    the file's params of that component (they were written for the old one); params given
    with the override start afresh.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with reading(path, "valid YAML", ConfigError):
            data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    extra = parse_overrides(overrides or [])
    # params belong to the component they were written for
    for section, name, params in OWNED_PARAMS:
        base, new = data.get(section), extra.get(section)
        renamed = isinstance(new, dict) and name in new
        if renamed and isinstance(base, dict) and new[name] != base.get(name):
            base.pop(params, None)
    data = _merge(data, extra)
    return from_dict(RunConfig, data)


def save_config(config: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
