"""What azd packages for Flex: the app and requirements.txt; never the lab, CLI, tests or infra."""

from __future__ import annotations

import re

from tests.infra.bicep import ROOT

MUST_STAY_OUT = {"lab", "cli", "tests", "bench", "infra", "docs", ".venv", "node_modules", "__pycache__"}
MUST_SHIP = ("function_app.py", "host.json", "requirements.txt")


def _funcignore() -> set[str]:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")}


def test_funcignore_keeps_everything_but_the_app_out_of_the_package():
    assert MUST_STAY_OUT - _funcignore() == set()


def test_funcignore_keeps_the_app_itself_in_the_package():
    ignored = _funcignore()
    assert [name for name in (*MUST_SHIP, "jitbroker") if name in ignored] == []
    assert all((ROOT / name).is_file() for name in MUST_SHIP)


def test_the_remote_build_installs_runtime_dependencies_only():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [line.split("#")[0].strip() for line in lines]
    names = {re.split(r"[<>=!~\[ ;]", line)[0].lower().replace("_", "-") for line in requirements if line}
    dev_only = {"pytest", "uvicorn", "checkov", "pycep-parser", "schemathesis", "hypothesis", "ruff", "mypy"}
    # the platform provides the worker; the CLI installs on its own, on users' machines
    not_ours_to_ship = {"azure-functions-worker", "jit-cli", "jit-broker"}
    assert (dev_only | not_ours_to_ship) & names == set()
    assert "azure-functions" in names


def test_the_remote_build_is_not_handed_a_local_path_or_another_index():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    requirements = [line.split("#")[0].strip() for line in lines]
    options = [line for line in requirements if line.startswith(("-", ".", "/")) or "://" in line]
    assert options == []
