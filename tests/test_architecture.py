"""The import graph of the fedvla package has the architecture's shape (issue 14, item 1).

Every module belongs to one component, and each component is one folder of the package:
``fedvla/<component>/``. The graph counts every import, at module level or inside a function.

- No circle between components.
- The core (models, run state machine, event log, services, migrations) imports neither FastAPI
  nor Celery, and nothing outside the core.
- The web side sends runs by the task's name: nothing it imports, however indirectly, loads the
  worker's task module.
"""

import ast
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedvla",)
COMPONENTS = ("core", "web", "orchestration", "engine", "sites", "cli")

CORE_MAY_NOT_IMPORT = ("fastapi", "starlette", "sse_starlette", "celery", "kombu")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(module: str, path: Path) -> Iterable[str]:
    """Every dotted name the module imports, relative imports resolved, ``from x import y`` as
    ``x.y`` (y may be a module) and ``x``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base] if base else parents)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Imports between our modules, and each module's third-party top-level packages."""
    paths = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}

    def ours(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    internal: dict[str, set[str]] = {module: set() for module in paths}
    external: dict[str, set[str]] = {module: set() for module in paths}
    for module, path in paths.items():
        for name in _imported_names(module, path):
            target = ours(name)
            if target is None:
                external[module].add(name.partition(".")[0])
            elif target != module:
                internal[module].add(target)
    return internal, external


def component_of(module: str) -> str:
    """``fedvla.<component>...``; the package's own ``__init__`` holds nothing and counts as
    core."""
    if module == "fedvla":
        return "core"
    parts = module.split(".")
    if parts[0] == "fedvla" and parts[1] in COMPONENTS:
        return parts[1]
    raise LookupError(f"{module} belongs to no component: put it under fedvla/<component>/")


def component_edges(graph: Mapping[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """(from, to) between different components -> the module imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, targets in graph.items():
        source = component_of(module)
        for target in sorted(targets):
            if component_of(target) != source:
                edges.setdefault((source, component_of(target)), []).append(f"{module} -> {target}")
    return edges


def find_cycle(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """One circle in the directed graph, as its nodes with the first repeated at the end."""
    successors: dict[str, set[str]] = {}
    for source, target in edges:
        successors.setdefault(source, set()).add(target)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for successor in sorted(successors.get(node, ())):
            cycle = visit(successor, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(successors):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def reachable(graph: Mapping[str, set[str]], starts: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_the_cycle_finder_finds_a_circle_and_only_a_circle() -> None:
    assert find_cycle([("web", "core"), ("core", "engine")]) is None
    assert find_cycle([("web", "core"), ("core", "orchestration"), ("orchestration", "web")]) == [
        "core",
        "orchestration",
        "web",
        "core",
    ]


def test_every_module_belongs_to_a_component() -> None:
    internal, _ = import_graph()
    assert len(internal) > 100
    for module in internal:
        component_of(module)


def test_no_circle_between_components() -> None:
    internal, _ = import_graph()
    edges = component_edges(internal)
    cycle = find_cycle(edges)
    if cycle is not None:
        steps = itertools.pairwise(cycle)
        because = "\n".join(f"{a} -> {b}: {', '.join(edges[(a, b)])}" for a, b in steps)
        raise AssertionError(f"circle {' -> '.join(cycle)}\n{because}")


def test_the_core_imports_only_itself_and_neither_fastapi_nor_celery() -> None:
    internal, external = import_graph()
    core = [module for module in internal if component_of(module) == "core"]
    outward = {
        f"{module} -> {target}"
        for module in core
        for target in internal[module]
        if component_of(target) != "core"
    }
    assert outward == set()
    frameworks = {
        f"{module} imports {package}"
        for module in core
        for package in external[module] & set(CORE_MAY_NOT_IMPORT)
    }
    assert frameworks == set()


def test_the_web_side_never_loads_the_worker_task() -> None:
    internal, _ = import_graph()
    web = [module for module in internal if component_of(module) == "web"]
    loaded = reachable(internal, web)
    assert "fedvla.orchestration.dispatch" in loaded  # it sends runs, by the task's name
    assert {
        "fedvla.orchestration.tasks",
        "fedvla.orchestration.supervisor",
        "fedvla.orchestration.run_child",
    } & loaded == set()
