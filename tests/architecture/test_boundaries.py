"""The dependency rules of docs/design.md §2, checked on the source: what each part may import.

- the broker (`jitbroker/`, `function_app.py`) never imports the lab, the CLI, the tests or the benchmarks;
- the CLI (`cli/jitcli/`) never imports the broker or the lab: it is installed on its own;
- inside the broker, dependencies point one way: the layers below the API never import `api` or `runtime`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_packages(path: Path) -> set[str]:
    """Every module a file imports, absolute, as dotted names (relative imports are not used in this repo)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def files(*parts: str) -> list[Path]:
    base = ROOT.joinpath(*parts)
    return sorted(base.rglob("*.py")) if base.is_dir() else [base]


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        bad = sorted(m for m in imported_packages(path) if m.split(".")[0] in forbidden)
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


@pytest.mark.parametrize(
    ("part", "forbidden"),
    [
        (("jitbroker",), ("lab", "jitcli", "tests", "bench")),
        (("function_app.py",), ("lab", "jitcli", "tests", "bench")),
        (("cli", "jitcli"), ("jitbroker", "lab", "tests", "bench")),
    ],
)
def test_each_part_imports_only_what_it_may(part: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    assert files(*part), f"nothing found under {part}"
    assert offending(files(*part), forbidden) == {}


def test_the_layers_below_the_api_never_reach_up_into_it() -> None:
    upper = {"jitbroker.api", "jitbroker.runtime"}
    below = [p for p in files("jitbroker") if p.stem not in ("api", "runtime")]
    reaching_up = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & upper)
        for p in below
        if imported_packages(p) & upper
    }
    assert reaching_up == {}


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom lab.arm import ArmEmulator\n", encoding="utf-8")
    assert imported_packages(module) == {"os", "lab.arm"}
