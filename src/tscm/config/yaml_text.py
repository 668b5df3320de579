"""A settings file read as plain YAML: bounded size, UTF-8, no anchors, aliases, repeated keys or Python
tags, bounded depth; every refusal a TscmError naming the file, the line and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tscm.errors import TscmError, excerpt
from tscm.fileio import read_bytes_bounded


def yaml_problem(error: Exception) -> str:
    """A YAML error in one line: where (line, column) and what, without PyYAML's multi-line excerpt."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = f"{where}{problem}" + (f" ({context})" if context else "")
    if "python/" in str(error):  # a !!python/... tag: refused by the safe loader, never constructed
        text += "; tags that build Python objects are never allowed"
    return " ".join(text.split())


# A settings file is a few kilobytes; a larger one is not a settings file (and is not read into memory).
MAX_YAML_BYTES = 1 << 20


def read_yaml_text(path: Path) -> str:
    """The text of a YAML file; TscmError naming the file when it is unreadable, not a regular file, larger
    than MAX_YAML_BYTES or not UTF-8."""
    data = read_bytes_bounded(path, MAX_YAML_BYTES, "settings file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise TscmError(f"{path} line {line} (byte {error.start}): not UTF-8 text (byte 0x{data[error.start]:02x}); "
                        "save the file as UTF-8") from None


class _PlainYamlLoader(yaml.SafeLoader):
    """The safe loader without anchors, aliases or duplicate keys: a settings file is a plain tree, so an
    alias only serves to make a small file expand (nested aliases: gigabytes from a few hundred bytes), and
    a repeated key would silently drop the first (a whole `train:` section)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise _PlainYamlRefusal(f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}: "
                                    f"{kind}{excerpt(event.anchor, 40)[1:-1]}: anchors and aliases are not allowed "
                                    "in tscm settings; write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _PlainYamlRefusal(f"line {line}: key {excerpt(key, 40)} appears a second time (first on line "
                                            f"{first_line[key]}); the second would silently replace the first")
                first_line[key] = line
            except TypeError:  # an unhashable key: the base loader reports it
                continue
        return super().construct_mapping(node, deep=deep)


class _PlainYamlRefusal(Exception):
    pass


# Deeper than this a settings file is not one (tscm's have 2 levels); the bound keeps parsing off the stack limit.
MAX_YAML_DEPTH = 32


def _yaml_depth_exceeds(node: Any, limit: int) -> bool:
    stack = [(node, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (yaml.SequenceNode, yaml.MappingNode)):
            if depth > limit:
                return True
            children = item.value if isinstance(item, yaml.SequenceNode) else [v for pair in item.value for v in pair]
            stack.extend((child, depth + 1) for child in children)
    return False


def load_yaml(text: str, where: str) -> Any:
    """The plain data of a YAML settings text (no anchors, aliases, duplicate keys or Python tags; at most
    MAX_YAML_DEPTH levels); TscmError naming `where`, the line and the problem otherwise."""
    loader = _PlainYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _yaml_depth_exceeds(node, MAX_YAML_DEPTH):
            raise _PlainYamlRefusal(f"nested deeper than {MAX_YAML_DEPTH} levels; not a settings file")
        return loader.construct_document(node)
    except _PlainYamlRefusal as refusal:
        raise TscmError(f"{where}: {refusal}") from None
    except RecursionError:
        raise TscmError(f"{where}: nested too deeply to read; not a settings file") from None
    except yaml.YAMLError as error:
        raise TscmError(f"{where}: not valid YAML: {yaml_problem(error)}") from None
    finally:
        loader.dispose()
