"""Imports at module level, except where a command's start needs one deferred, and then it says so.

The rule (docs/decisions.md, issue 16): an `import` inside a function is allowed only where it
keeps the command line fast to start (torch and friends take seconds), marked on its line with
`# deferred: <why>`. The second test checks that the deferrals do their job.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tuneforge"
HEAVY = ("torch", "transformers", "peft", "datasets", "sklearn", "matplotlib")


def unexplained_deferred_imports(root: Path) -> list[str]:
    """`file:line: statement` for each import inside a function without a `# deferred:` reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line = lines[node.lineno - 1]
                    if "# deferred:" not in line:
                        found.append(
                            f"{path.relative_to(root.parent)}:{node.lineno}: {line.strip()}"
                        )
    return sorted(set(found))


def test_every_import_inside_a_function_says_why():
    assert unexplained_deferred_imports(PACKAGE) == []


def test_the_checker_sees_an_unexplained_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "def f():\n    import json\n    return json\n\n"
        "def g():\n    import os  # deferred: CLI start (os)\n    return os\n"
    )
    assert unexplained_deferred_imports(pkg) == ["pkg/a.py:2: import json"]


def test_the_command_line_starts_without_the_heavy_libraries():
    """What the deferrals are for: `tuneforge --help` and every command's parsing load none of
    torch, transformers, peft, datasets, sklearn or matplotlib."""
    probe = f"import sys, tuneforge.cli\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
