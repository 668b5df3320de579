"""A `TrainConfig` from defaults, then a shipped preset or YAML file, then `section.field=value` overrides,
then the checks; every value set through `tscm.config.fields.set_value` (converted, checked, named)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from tscm.config.fields import apply_text_overrides, set_value
from tscm.config.sections import TrainConfig, section_names
from tscm.config.yaml_text import load_yaml, read_yaml_text
from tscm.errors import TscmError, excerpt


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
    apply_text_overrides(config, overrides)
    if kind is not None and config.kind != kind:
        raise TscmError(f"config {name_or_path}: describes a {config.kind} run, expected {kind}")
    config.check()
    return config


def train_config_from_dict(mapping: dict[str, Any], where: str = "config") -> TrainConfig:
    """Rebuild a config from `to_dict()` output (e.g. a run's saved config.yaml)."""
    config = TrainConfig()
    apply_mapping(config, mapping, where)
    config.check()
    return config
