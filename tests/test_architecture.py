"""The package's shape: imports go one way (errors/keys/files -> rundir -> core -> models -> methods -> train -> grid ->
report -> bench), no import cycle, no project import inside a function, modules of about 400 lines at most."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"we.errors": 0, "we.keys": 0, "we.files": 0, "we.rundir": 0.5, "we": 1, "we.core": 1, "we.lightning": 1.5, "models": 2,
          "we.methods": 3, "we.train": 4, "we.grid": 5, "we.report": 6, "we.bench": 7, "we.commands": 8}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for root in ("we", "models") for p in sorted((REPO / root).rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(module)


def project_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import of `path`; a `from X import y`
    where X.y is a module counts as importing X.y."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in MODULES else child.module
                         for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level:
                raise AssertionError(f"{path}:{child.lineno}: relative import")
            for name in names:
                if name.split(".")[0] in ("we", "models"):
                    out.append((name, child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return out


def test_every_module_is_known():
    assert "we.core.hook" in MODULES and "we.methods.base" in MODULES and "models.cifar_resnet" in MODULES
    for name in MODULES:
        layer(name)  # raises for a module outside the layer map


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way_at_module_top(module: str):
    path = MODULES[module]
    for target, line, inside in project_imports(path):
        assert not inside, f"{path}:{line}: project import of {target} inside a function"
        if path.name == "__main__.py":  # an entry script: nothing imports it
            continue
        assert layer(target) <= layer(module), \
            f"{path}:{line}: {module} (layer {layer(module)}) imports {target} (layer {layer(target)})"


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in project_imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines (one concept per module, about {MAX_LINES} at most)"


def test_the_checker_sees_what_it_forbids(tmp_path):
    """The rules above can fail: a function-level import and an upward import are both reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import we.errors\n\ndef f():\n    from we.train import config\n    return config\n")
    found = project_imports(bad)
    assert ("we.errors", 1, False) in found and ("we.train.config", 4, True) in found
    assert layer("we.train.config") > layer("we.core.units")


def test_the_report_reads_folders_only():
    """Importing every module of we.report (a table rebuilt from a copied results/runs on a laptop) loads
    neither the trainer nor submitit nor an executor nor the grid's job state (sacct, local pids)."""
    modules = sorted(m for m in MODULES if (m == "we.report" or m.startswith("we.report.")) and
                     not m.endswith(".__main__"))  # the entry script runs the CLI when imported
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            "print('\\n'.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split())
    forbidden = {"submitit", "we.train.trainer", "we.grid.jobs", "we.grid.local", "we.grid.slurm", "we.grid.state",
                 "we.grid.worker", "we.grid"}
    assert len(modules) > 5 and "we.report.tables" in loaded
    assert not loaded & forbidden, sorted(loaded & forbidden)
