"""Imports point one way: every `import tscm…` / `from tscm… import` in src/ (at module level and
inside functions) goes to the same layer or a lower one, and the modules import no circle.

The layer order is the one docs/architecture.md (section Layers) draws; a new package or top-level
module must be placed in LAYERS before it can be imported by anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

# Highest first. A module may import its own layer's modules (except where SEPARATE says not) and
# any lower layer's; never a higher one. Keys are module prefixes; the longest matching one counts.
LAYERS: list[tuple[str, ...]] = [
    ("tscm.cli", "tscm.__main__"),
    ("tscm.commands",),
    ("tscm.experiments", "tscm.bench"),
    ("tscm.deploy.retrieval", "tscm.deploy.packaging", "tscm.deploy"),
    ("tscm.train",),
    ("tscm.evaluation",),
    ("tscm.inference",),
    ("tscm.data", "tscm.models", "tscm.losses"),
    ("tscm.config",),
    ("tscm.machine", "tscm.distributed", "tscm.threads", "tscm.fileio", "tscm.errors", "tscm"),
]
# Packages of one layer that must not import each other.
SEPARATE = [
    ("tscm.experiments", "tscm.bench"),
    ("tscm.deploy.retrieval", "tscm.deploy.packaging"),
    ("tscm.data", "tscm.models", "tscm.losses"),
]
# Commands import the library and the two shared option modules, never another command.
COMMAND_SHARED = ("tscm.commands.run_options", "tscm.commands.training_options")


def _prefix(module: str) -> str:
    """The LAYERS key that `module` falls under (the longest matching prefix)."""
    best = ""
    for layer in LAYERS:
        for key in layer:
            if (module == key or module.startswith(key + ".")) and len(key) > len(best):
                best = key
    return best


def layer_of(module: str) -> int:
    """0 for the top layer, larger further down; raises for a module LAYERS does not place."""
    key = _prefix(module)
    for rank, layer in enumerate(LAYERS):
        if key in layer:
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py LAYERS (and docs/architecture.md)")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported tscm module, line) for every import in the file, however deeply nested."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "tscm"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tscm":
                continue
            # `from tscm.x import y` may import the module tscm.x.y; count that where it is a module.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                is_module = any((SOURCE / Path(*candidate.split("."))).with_suffix(suffix).exists()
                                for suffix in (".py",)) or (SOURCE / Path(*candidate.split(".")) / "__init__.py").exists()
                found.append((candidate if is_module else target, node.lineno))
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(path): imports_of(path) for path in sorted((SOURCE / "tscm").rglob("*.py"))}


def _separate_group(module: str) -> tuple[int, str] | None:
    for index, group in enumerate(SEPARATE):
        for key in group:
            if module == key or module.startswith(key + "."):
                return index, key
    return None


def test_no_import_runs_upward_or_across():
    graph = import_graph()
    problems = []
    for module, targets in graph.items():
        for target, line in targets:
            if layer_of(target) < layer_of(module):
                problems.append(f"{module}:{line} imports {target}, a higher layer")
            mine, theirs = _separate_group(module), _separate_group(target)
            if mine and theirs and mine[0] == theirs[0] and mine[1] != theirs[1]:
                problems.append(f"{module}:{line} imports {target}: {mine[1]} and {theirs[1]} stay apart")
            if (module.startswith("tscm.commands.") and target.startswith("tscm.commands.")
                    and target not in COMMAND_SHARED and target != module):
                problems.append(f"{module}:{line} imports the command {target}")
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    modules = import_graph_modules()
    graph = {module: sorted({target for target, _ in targets if target in modules and target != module})
             for module, targets in import_graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles = []

    def visit(path: list[str]) -> None:
        module = path[-1]
        state[module] = 1
        for target in graph[module]:
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit([module])
    assert not cycles, "\n".join(cycles)


def import_graph_modules() -> set[str]:
    return {module_name(path) for path in (SOURCE / "tscm").rglob("*.py")}


def test_every_module_has_a_layer():
    for module in import_graph_modules():
        layer_of(module)
