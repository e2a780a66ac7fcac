"""The layout's rules, checked on the source: no import cycles, and nothing imports the job.

Read statically (ast), so the check is exact and fast: every `import` of a tuneforge module is an
edge, inside functions too, so a deferred import cannot hide a cycle (importing `a.b.c` also runs
`a/__init__` and `a/b/__init__`, so those are edges too, except a module's own packages, which are
loaded before it).
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "tuneforge"
JOB = "tuneforge.training.job"
# Where a job starts (`train` of the API and the command line go through it): it imports the job
# inside the function that runs it in this process, so a parent that launches training processes
# never loads the model code (`training/entry.py`), and `tuneforge --help` stays fast.
MAY_IMPORT_JOB = {"tuneforge.training.entry"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.AST, module: str) -> set[str]:
    """The tuneforge modules an import statement loads (parent packages included)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:  # `from pkg import submodule` names the submodule
            sub = f"{node.module}.{alias.name}"
            names.append(sub if sub in MODULES else node.module)
    found = set()
    for name in names:
        if not name.startswith("tuneforge"):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            implicit = i < len(parts)  # a parent package of what was named
            own_ancestor = module.startswith(candidate + ".")  # already loaded before `module`
            if candidate in MODULES and candidate != module and not (implicit and own_ancestor):
                found.add(candidate)
    return found


def all_imports(module: str) -> set[str]:
    """Every tuneforge module it imports anywhere, inside functions too."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        found |= _targets(node, module)
    return found


def test_the_module_graph_has_no_cycles():
    """Not even through imports inside functions (a deferred import must not hide a cycle)."""
    graph = {module: all_imports(module) for module in MODULES}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    assert set(order) == set(MODULES)


def test_nothing_imports_the_training_job_but_the_entry_points():
    importers = {m for m in MODULES if JOB in all_imports(m)}
    assert importers <= MAY_IMPORT_JOB, sorted(importers - MAY_IMPORT_JOB)


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The check itself: two modules importing each other are reported."""
    pkg = tmp_path / "tuneforge"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from tuneforge.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from tuneforge import a\n")  # hidden in a function
    monkeypatch.setattr(
        __import__(__name__, fromlist=["MODULES"]),
        "MODULES",
        {
            "tuneforge": pkg / "__init__.py",
            "tuneforge.a": pkg / "a.py",
            "tuneforge.b": pkg / "b.py",
        },
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["SRC"]), "SRC", tmp_path)
    assert all_imports("tuneforge.b") == {"tuneforge.a"}
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_the_module_graph_has_no_cycles()


def test_a_launching_train_does_not_load_the_model_code():
    """`tuneforge train` with `training.processes: N` waits while N processes train: what it
    imports to read the recipe and launch them must not include transformers or the job (the
    processes would start seconds later, `training/entry.py`)."""
    heavy = ("transformers", "peft", "trl", "sklearn", JOB, "tuneforge.runs.run")
    code = (
        "import sys, tuneforge.cli.train, tuneforge.training.entry; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"imported before any process starts: {loaded}"
