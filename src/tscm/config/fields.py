"""The one settings idiom of tscm: a typed dataclass whose fields carry their help, choices and range
(`setting`), built and overridden through one path (`set_value`, `apply_overrides`, `apply_text_overrides`).

A `name=value` or `section.field=value` item is converted to the field's declared type and checked against the
field's choices and range as it is set; a mistake names the setting (or its command-line flag, for a class
with `AS_FLAGS`), the value and what was expected. Checks across fields are each class's `check()`, which
starts with `check_fields` (for values set in code).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

from tscm.errors import TscmError, excerpt

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


def setting(default: Any, help: str = "", *, choices: tuple[str, ...] | None = None, least: float | None = None,
            above: float | None = None, most: float | None = None) -> Any:
    """A dataclass field with its help, its choices and its range: `least` ≤ value, `above` < value, value ≤
    `most` (of a list or tuple, every item). A list default is copied for each instance."""
    metadata = {"help": help, "choices": choices, "least": least, "above": above, "most": most}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def setting_name(settings: Any, key: str) -> str:
    """How messages name a setting: its key (`train.lr`), or its flag (`--max-queries`) in a class with AS_FLAGS."""
    return "--" + key.replace("_", "-") if getattr(settings, "AS_FLAGS", False) else key


def _fail(name: str, expected: str, value: Any, where: str | None) -> typing.NoReturn:
    prefix = f"{where}: " if where else ""
    shown = f"{value:.12g}" if isinstance(value, float) else excerpt(value)  # 1e+12, not 1000000000000.0
    raise TscmError(f"{prefix}{name}: expected {expected}, got {shown}")


def convert(value: Any, target: Any, name: str, where: str | None = None) -> Any:
    """`value` (command-line text, a YAML or Python value) as the declared type `target`, or TscmError naming it."""
    origin, args = typing.get_origin(target), typing.get_args(target)
    if origin in (typing.Union, types.UnionType):  # `X | None`
        if value is None:
            return None
        return convert(value, next(a for a in args if a is not type(None)), name, where)
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            _fail(name, "a list", value, where)
        converted = [convert(item, args[0], name, where) for item in items]
        return converted if origin is list else tuple(converted)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        _fail(name, "true or false", value, where)
    if target is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        _fail(name, "an integer", value, where)
    if target is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            _fail(name, "a finite number", value, where)
        return number
    if target is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        _fail(name, "a string", value, where)
    if target is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        _fail(name, "a path", value, where)
    raise TscmError(f"{name} has unsupported type {target}")


def _expected(f: dataclasses.Field, item: Any) -> str:
    """What a field's range asks for, in words: `an integer ≥ 1`, `a number in (0, 1]`, `a positive number`."""
    least, above, most = (f.metadata.get(k) for k in ("least", "above", "most"))
    kind = "an integer" if isinstance(item, int) else "a number"
    low = least if least is not None else above
    if most is not None and low is not None:
        if least is not None and isinstance(item, int):
            return f"{kind} in {least}..{most}"
        return f"{kind} in {'[' if least is not None else '('}{low:g}, {most:g}]"
    if above == 0:
        return f"a positive {kind.split()[1]}"
    if above is not None:
        return f"{kind} > {above:g}"
    if least is not None:
        return f"{kind} ≥ {least:g}"
    return f"{kind} ≤ {most:g}"


def check_value(f: dataclasses.Field, value: Any, name: str, where: str | None = None) -> None:
    """`value` among the field's choices and in its range (of a list or tuple, every item), or TscmError naming `name`."""
    choices, least, above, most = (f.metadata.get(k) for k in ("choices", "least", "above", "most"))
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if choices is not None and item not in choices:
            _fail(name, f"one of {', '.join(choices)}", item, where)
        if item is None or isinstance(item, (str, bool)):
            continue
        if ((least is not None and not item >= least) or (above is not None and not item > above)
                or (most is not None and not item <= most)):
            _fail(name, _expected(f, item), item, where)


def check_fields(settings: Any, where: str | None = None, prefix: str = "") -> None:
    """Every field of `settings` (and of the settings dataclasses it holds) among its choices and in its range."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, where, f"{prefix}{f.name}.")
        else:
            check_value(f, value, setting_name(settings, prefix + f.name), where)


def _sections(settings: Any) -> list[str]:
    """The fields of `settings` that hold settings dataclasses (TrainConfig's `train`, `mining`, ...)."""
    return [f.name for f in dataclasses.fields(settings) if dataclasses.is_dataclass(getattr(settings, f.name))]


def set_value(settings: Any, key: str, value: Any, where: str | None = None) -> None:
    """Set `name` or `section.field` of `settings` to `value`, converted to the field's type and checked."""
    prefix = f"{where}: " if where else ""
    *path, name = key.split(".")
    target = settings
    for section in path:
        if section not in _sections(target):
            raise TscmError(f"{prefix}unknown section {excerpt(section)} in {excerpt(key)}; sections: "
                            f"{', '.join(_sections(target))}")
        target = getattr(target, section)
    fields = {f.name: f for f in dataclasses.fields(target) if f.name not in _sections(target)}
    if name not in fields:
        owner = ".".join(path) or type(target).__name__
        hint = f"; sections: {', '.join(_sections(target))} (section.field=value)" if _sections(target) else ""
        raise TscmError(f"{prefix}unknown setting {excerpt(setting_name(settings, key))}; {owner} has: "
                        f"{', '.join(fields)}{hint}")
    shown = setting_name(settings, key)
    converted = convert(value, typing.get_type_hints(type(target))[name], shown, where)
    check_value(fields[name], converted, shown, where)
    setattr(target, name, converted)


def apply_overrides(settings: Any, overrides: Mapping[str, Any], where: str | None = None) -> None:
    """Set every `name: value` (or `section.field: value`) of `overrides`, in order, through `set_value`."""
    for key, value in overrides.items():
        set_value(settings, key, value, where)


def parse_override(text: str) -> tuple[str, str]:
    """Split `section.field=value`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise TscmError(f"override {excerpt(text)}: expected section.field=value, e.g. train.lr=3e-4")
    return key.strip(), value.strip()


def apply_text_overrides(settings: Any, items: Iterable[str], what: str = "override") -> None:
    """Set every `section.field=value` text item (from `--set`), each error naming `what` and the item."""
    for item in items:
        key, value = parse_override(item)
        set_value(settings, key, value, f"{what} {excerpt(item)}")


def flags_given(args: Any, settings_type: type) -> dict[str, Any]:
    """The parsed flags (an argparse Namespace) named like fields of `settings_type` and given: not None and not an
    empty list, which is what argparse leaves for a flag left out."""
    names = {f.name for f in dataclasses.fields(settings_type)}
    return {name: value for name, value in vars(args).items() if name in names and value is not None and value != []}


def build_settings(settings_type: type, *layers: Mapping[str, Any], **required: Any) -> Any:
    """`settings_type(**required)`, then each layer of overrides in turn (e.g. the `--quick` values, then the flags
    given), then its `check()`."""
    settings = settings_type(**required)
    for layer in layers:
        apply_overrides(settings, layer)
    settings.check()
    return settings
