"""The dependency arrows of docs/DESIGN's layout, checked on the source: nothing imports the runner but the entry
point, no import cycle among folora's modules, analysis reads no model code, methods and baselines never reach the
runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from folora.records.identity import REPO, _local_imports

PACKAGES = ("folora", "baselines", "analysis", "experiments", "scripts")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The modules of folora and baselines that `name` imports, anywhere in its file."""
    return {target for target in _local_imports(path, name) if target in modules() and target != name}


def test_only_the_entry_point_imports_the_runner():
    importers = sorted(name for name, path in modules().items() if "folora.experiment.runner" in imports(name, path))
    assert importers == ["folora.run"]


def test_methods_tasks_evals_and_baselines_never_import_the_experiment_package():
    for name, path in modules().items():
        if name.split(".")[0] == "baselines" or name.startswith(("folora.methods", "folora.tasks", "folora.evals",
                                                                   "folora.fo_lora", "folora.calibration",
                                                                   "folora.training", "folora.records")):
            reached = {m for m in imports(name, path) if m.startswith("folora.experiment") or m == "folora.run"}
            assert not reached, f"{name} imports {sorted(reached)}"


def test_no_import_cycle_among_the_project_modules():
    graph = {name: {m for m in _local_imports(path, name) if m in modules() and m != name}
             for name, path in modules().items() if name.startswith(("folora", "baselines"))}
    # a package's __init__ importing its own submodule is not a cycle worth reporting
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.integration
def test_analysis_imports_no_model_code():
    code = ("import sys, importlib, pkgutil, analysis\n"
            "for m in pkgutil.iter_modules(analysis.__path__):\n"
            "    importlib.import_module('analysis.' + m.name)\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'lm_eval') if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"analysis/ imports {out.stdout.strip()}"
