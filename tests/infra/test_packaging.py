"""What azd packages for Flex: the app and requirements.txt; never the lab, CLI, tests or infra."""

from __future__ import annotations

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
    names = {line.split(">")[0].split("=")[0].split("[")[0].strip().lower() for line in lines}
    assert {"pytest", "uvicorn", "checkov", "pycep-parser", "azure-functions-worker"} & names == set()
