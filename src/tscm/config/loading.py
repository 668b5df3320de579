"""A `TrainConfig` from defaults, then a shipped preset or YAML file, then `section.field=value` overrides,
then the checks; values converted to each field's type, unknown keys and bad values named."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from tscm.config.sections import TrainConfig, field_type, section_fields, section_names, validate
from tscm.config.yaml_text import load_yaml, read_yaml_text
from tscm.errors import TscmError, excerpt


def _coerce(value: Any, target: type, key: str, where: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise naming the key."""
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise TscmError(f"{where}: {key} must be true or false, got {excerpt(value)}")
    if target is int:
        if isinstance(value, bool):
            raise TscmError(f"{where}: {key} must be an integer, got {excerpt(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise TscmError(f"{where}: {key} must be an integer, got {excerpt(value)}")
    if target is float:
        if isinstance(value, bool):
            raise TscmError(f"{where}: {key} must be a number, got {excerpt(value)}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        raise TscmError(f"{where}: {key} must be a finite number, got {excerpt(value)}")
    if target is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TscmError(f"{where}: {key} must be a string, got {excerpt(value)}")
    raise TscmError(f"{where}: {key} has unsupported type {target}")


def set_value(config: TrainConfig, key: str, value: Any, where: str = "override") -> None:
    """Set `section.field` (or `kind`) to `value`, converting and checking it."""
    if key == "kind":
        config.kind = _coerce(value, str, key, where)
        return
    section, _, name = key.partition(".")
    if section not in section_names():
        raise TscmError(f"{where}: unknown section {excerpt(section)} in {excerpt(key)}; sections: {', '.join(section_names())}")
    fields = section_fields(section)
    if name not in fields:
        raise TscmError(f"{where}: unknown setting {excerpt(key)}; {section} has: {', '.join(fields)}")
    converted = _coerce(value, field_type(section, name), key, where)
    choices = fields[name].metadata.get("choices")
    if choices is not None and converted not in choices:
        raise TscmError(f"{where}: {key} must be one of {', '.join(choices)}, got {excerpt(converted)}")
    setattr(getattr(config, section), name, converted)


def apply_mapping(config: TrainConfig, mapping: dict[str, Any], where: str) -> None:
    """Apply a nested mapping {section: {field: value}} as read from YAML."""
    if not isinstance(mapping, dict):
        raise TscmError(f"{where}: expected a mapping of sections, got {type(mapping).__name__}")
    for section, values in mapping.items():
        if section == "kind":
            set_value(config, "kind", values, where)
            continue
        if section not in section_names():
            raise TscmError(f"{where}: unknown section {excerpt(section)}; sections: {', '.join(section_names())}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise TscmError(f"{where}: section {excerpt(section)} must be a mapping, got {excerpt(values)}")
        for name, value in values.items():
            set_value(config, f"{section}.{name}", value, where)


def parse_override(text: str) -> tuple[str, str]:
    """Split `section.field=value`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise TscmError(f"override {excerpt(text)}: expected section.field=value, e.g. train.lr=3e-4")
    return key.strip(), value.strip()


def shipped_presets() -> list[str]:
    """Names of the YAML presets shipped in tscm/configs."""
    folder = resources.files("tscm") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name_or_path: str) -> tuple[str, str]:
    """The YAML text of a shipped preset (by name) or of a file (by path), with where it came from."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists() and not path.is_symlink():
            raise TscmError(f"config {name_or_path}: no such file")
        return read_yaml_text(path), str(path)  # a folder, FIFO or link loop is refused there, naming it
    resource = resources.files("tscm") / "configs" / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise TscmError(
            f"config {name_or_path!r}: not a YAML file and not a shipped preset; presets: {', '.join(shipped_presets())}"
        )
    return resource.read_text(encoding="utf-8"), f"preset {name_or_path}"


def load_config(
    name_or_path: str | None, overrides: Iterable[str] = (), kind: str | None = None
) -> TrainConfig:
    """Defaults, then the preset/YAML file, then `section.field=value` overrides, then checks."""
    config = TrainConfig()
    if kind is not None:
        config.kind = kind
    if name_or_path:
        text, where = preset_text(name_or_path)
        mapping = load_yaml(text, where) or {}
        apply_mapping(config, mapping, where)
    for item in overrides:
        key, value = parse_override(item)
        set_value(config, key, value, f"override {excerpt(item)}")
    if kind is not None and config.kind != kind:
        raise TscmError(f"config {name_or_path}: describes a {config.kind} run, expected {kind}")
    validate(config)
    return config


def train_config_from_dict(mapping: dict[str, Any], where: str = "config") -> TrainConfig:
    """Rebuild a config from `to_dict()` output (e.g. a run's saved config.yaml)."""
    config = TrainConfig()
    apply_mapping(config, mapping, where)
    validate(config)
    return config
