"""The house's architecture, checked: rooms import in one direction, no import cycle, one
concept per file (no file over 400 lines), the library free of Ray and MLflow.

Imports are read from the source (every ``import`` statement, function-level ones too, as
a lazy import is still a dependency), not by importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOMS = ("lipsync", "pipelines", "workflows")
MAX_LINES = 400
# pipelines/ sub-packages, lowest first: a sub-package imports only from lower ones (or itself);
# the three job kinds on the same level never import each other.
PIPELINE_LEVELS = {"common": 0, "tracking": 1, "dataset": 2, "preprocess": 3, "train": 3, "evaluate": 3,
                   "serve": 3, "orchestrate": 4}


def modules() -> dict[str, Path]:
    out = {}
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Every module (of ours, or a top-level third-party name) that ``path`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    ours = {m for m in found if m.split(".")[0] in ROOMS}
    return {m for m in ours if m in known} | {m.split(".")[0] for m in found - ours}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, name, known) - {name} for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_anywhere():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def module_level_imports(path: Path) -> set[str]:
    """Top-level names imported when the module itself is imported (not inside a function)."""
    names: set[str] = set()
    todo = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo.extend(ast.iter_child_nodes(node))
    return names


# The one place the library may reach MLflow: resolving a models:/ or runs:/ reference, lazily,
# so inference with a local file needs only the library.
LAZY_MLFLOW = {"lipsync.model_ref"}


def test_the_library_never_imports_ray_mlflow_or_the_platform():
    known = modules()
    wrong = []
    for name, deps in graph().items():
        if name.split(".")[0] != "lipsync":
            continue
        platform = {d for d in deps if d.split(".")[0] in ("pipelines", "workflows", "ray")}
        lazy_ok = {"mlflow"} if name in LAZY_MLFLOW else set()
        if platform or ("mlflow" in deps - lazy_ok) or ("mlflow" in module_level_imports(known[name])):
            wrong.append(f"{name}: {sorted(platform | ({'mlflow'} & deps))}")
    assert not wrong, "\n".join(wrong)


def test_pipelines_sub_packages_import_in_one_direction():
    wrong = []
    for name, deps in graph().items():
        parts = name.split(".")
        if parts[0] != "pipelines" or len(parts) < 3:
            continue
        mine = parts[1]
        assert mine in PIPELINE_LEVELS, f"{name}: pipelines/{mine}/ has no level in PIPELINE_LEVELS"
        for dep in deps:
            dparts = dep.split(".")
            if dparts[0] != "pipelines" or len(dparts) < 2 or dparts[1] == mine:
                continue
            if dparts[1] not in PIPELINE_LEVELS or PIPELINE_LEVELS[dparts[1]] >= PIPELINE_LEVELS[mine]:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "\n".join(wrong)
    flat = [p.name for p in (REPO / "pipelines").glob("*.py") if p.name != "__init__.py"]
    assert not flat, f"modules outside the sub-packages: {flat}"


def test_workflows_import_only_what_they_drive():
    for name, deps in graph().items():
        if name.startswith("workflows."):
            assert not {d for d in deps if d.startswith("workflows")}, f"{name}: a workflow imports another"


def test_no_file_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"one concept per file: {long}"
