"""The package's architecture as its imports show it: sub-packages in layers, imports pointing one way
(entry points -> library, never back), no import cycle between modules. Read from the source with `ast`
(every import, also those inside functions), so nothing is imported to check it."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "s3prl_star"

# Each layer may import itself and the layers before it, never one after it. The shipped data packages
# hold no library code; cli.py and __init__.py are entry points (cli names its subcommands as strings).
LAYERS = (
    ("s3prl_star.atomic", "s3prl_star.resources", "s3prl_star.processes"),
    ("s3prl_star.model",),
    ("s3prl_star.integration",),
    ("s3prl_star.distill",),
    ("s3prl_star.superb",),
    ("s3prl_star.mini_superb",),
)
ENTRY_POINTS = ("s3prl_star", "s3prl_star.cli", "s3prl_star.autoload")  # autoload: the start-up hook


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))
            if not {"downstream_recipes", "pretrain_plugin", "upstream_plugin"} & set(path.parts)}


def imported(path: Path, modules: set[str]) -> set[str]:
    """The s3prl_star modules `path` imports (`from package import module` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] == "s3prl_star"}
    return found


def layer_of(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    return {name: imported(path, set(modules)) - {name} for name, path in modules.items()}


def test_every_library_module_belongs_to_a_layer():
    unplaced = [name for name in library_modules() if layer_of(name) is None and name not in ENTRY_POINTS]
    assert unplaced == []


def test_imports_point_down_the_layers_only():
    upward = [f"{module} imports {target}" for module, targets in import_graph().items() if module not in ENTRY_POINTS
              for target in targets if (layer_of(target) or 0) > layer_of(module)]
    assert upward == []


def test_no_import_cycle_between_modules():
    graph = import_graph()
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module):] + [module]))
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layer rule is not vacuous: a model module importing the distiller is caught."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from s3prl_star.distill.losses import StarLoss\n")
    targets = imported(path, set(library_modules()))
    assert targets == {"s3prl_star.distill.losses"}
    assert layer_of("s3prl_star.distill.losses") > layer_of("s3prl_star.model.checkpoint")
