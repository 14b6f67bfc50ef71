"""The package's layout reads like the pipeline: no import runs from a lower stage to a higher one, and no two
modules import each other (at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import bonemet

ROOT = Path(bonemet.__file__).parent
# the pipeline's stages, lowest first; a module may import its own stage and the ones below
STAGES = {"models": 0, "data": 1, "phantom": 2, "runs": 2, "training": 3, "evaluation": 4, "reporting": 4, "inference": 5,
          "bench": 6, "demo": 6, "reproduce": 6, "recipe": 6, "cli": 7, "__main__": 8}
LEAVES = {"devices", "errors", "fileio", "log", "markdown", "__init__", "evaluation.metrics"}  # any stage may use these


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in ROOT.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the bonemet modules it imports (relative or absolute, at any depth of the file)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            candidate = ".".join(parts[:k])
            if candidate in modules:
                return candidate
            if candidate + ".__init__" in modules:
                return candidate + ".__init__"
        return None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.startswith("bonemet."):
                    module = node.module[len("bonemet."):]
                else:
                    continue
                for alias in node.names:
                    found = resolve(f"{module}.{alias.name}" if module else alias.name) or resolve(module)
                    if found:
                        targets.add(found)
            elif isinstance(node, ast.Import):
                targets |= {found for a in node.names if a.name.startswith("bonemet.")
                            if (found := resolve(a.name[len("bonemet."):]))}
        graph[name] = targets - {name}
    return graph


def _stage(module: str) -> int | None:
    if module in LEAVES or module.split(".")[0] in LEAVES:
        return None
    return STAGES.get(module.split(".")[0])


def test_no_import_runs_up_the_pipeline():
    upward = {(a, b) for a, targets in import_graph().items() for b in targets
              if _stage(a) is not None and _stage(b) is not None and _stage(b) > _stage(a)}
    assert not upward, sorted(upward)


def test_no_two_modules_import_each_other():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # package __init__ files that re-export their modules are not cycles of the modules themselves
    cycles = [c for c in cycles if not any(m.endswith("__init__") for m in c)]
    assert not cycles, cycles


def test_the_graph_sees_a_function_level_import():
    """The walk reads imports inside functions too: volume.py once imported the DICOM reader inside read_volume."""
    graph = import_graph()
    assert "data.dicom" in graph["data.ct"] and "data.volume" in graph["data.dicom"]
    assert "data.dicom" not in graph["data.volume"]
    assert "inference.fast" in graph["cli.seg"]  # imported inside a command function


def test_loading_a_run_for_prediction_touches_only_runs_models_and_inference():
    """What the predictors import, at any depth: the run folder's owner, the models, inference and the data layer
    (reading scans), never training or evaluation."""
    graph = import_graph()
    seen, todo = set(), ["inference.runners"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    stages = {m.split(".")[0] for m in seen}
    assert not stages & {"training", "evaluation", "bench", "cli"}, sorted(m for m in seen
                                                                      if m.split(".")[0] in {"training", "evaluation"})
    assert {"runs", "models", "inference"} <= stages
