"""The Functions entry indexes the way the Python worker indexes it, and serves the API at the same paths."""

from __future__ import annotations

import asyncio
import fnmatch
import importlib
import json
import sys
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions import FunctionRegister

ROOT = Path(__file__).resolve().parents[2]


def index_function_app() -> list[func.decorators.function_app.Function]:
    """What azure_functions_worker.loader.index_function_app does: import the script, find exactly one
    FunctionRegister at module level, return its functions."""
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    registers = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    assert len(registers) == 1, "the worker refuses a script with more than one function app"
    (app,) = registers
    return app.get_functions()  # validates the names, as the worker relies on


def test_function_app_registers_exactly_the_http_api_and_the_sweep_timer() -> None:
    functions = {str(f.get_function_name()): f for f in index_function_app()}
    assert sorted(functions) == ["api", "deliver", "sweep"]

    (http_in, http_out) = (b.get_dict_repr() for b in functions["api"].get_bindings())
    assert http_in["type"] == "httpTrigger"
    assert http_in["authLevel"] == func.AuthLevel.ANONYMOUS  # the broker verifies every token itself
    assert http_in["route"] == "/{*route}"
    assert {str(m.value) if hasattr(m, "value") else m for m in http_in["methods"]} >= {
        "GET",
        "POST",
        "DELETE",
    }
    assert http_out["type"] == "http"

    (timer,) = (b.get_dict_repr() for b in functions["sweep"].get_bindings())
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "%JIT_SWEEP_SCHEDULE%"
    assert timer["runOnStartup"] is False


def test_function_app_json_is_what_the_host_reads() -> None:
    for function in index_function_app():
        document = json.loads(function.get_function_json())
        assert document["scriptFile"] == "function_app.py"
        assert document["bindings"]


def test_schedule_setting_is_in_the_sample_settings() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert len(sample["JIT_SWEEP_SCHEDULE"].split()) == 6  # NCRONTAB with seconds, as the timer expects


def test_host_json_serves_the_api_at_the_same_paths_as_uvicorn() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""
    assert host["extensionBundle"]["version"].startswith("[4.")
    assert "functionTimeout" in host


def test_health_answers_through_the_functions_asgi_adapter() -> None:
    """The Functions host hands the ASGI app `/api/health` (routePrefix "") with no client address."""
    functions = {f.get_function_name(): f for f in index_function_app()}
    handler = functions["api"].get_user_function()
    request = func.HttpRequest("GET", "http://localhost/api/health", body=b"", headers={})
    response = asyncio.run(handler(request, None))
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"status": "ok"}


@pytest.mark.parametrize(
    ("path", "published"),
    [
        ("function_app.py", True),
        ("host.json", True),
        ("requirements.txt", True),
        ("jitbroker/grants.py", True),
        ("lab/arm/server.py", False),
        ("cli/jitcli/main.py", False),
        ("tests/broker/test_api.py", False),
        ("bench/run.py", False),
        ("infra/main.bicep", False),
        ("docs/api.md", False),
        ("README.md", False),
        (".venv/bin/python", False),
        ("node_modules/azurite/package.json", False),
        ("jitbroker/__pycache__/api.cpython-311.pyc", False),
        ("local.settings.json", False),
        ("local.settings.sample.json", False),
        ("package.json", False),
        ("package-lock.json", False),
        ("requirements-dev.txt", False),
        (".mypy_cache/3.11/x.json", False),
    ],
)
def test_funcignore_publishes_only_the_app(path: str, published: bool) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    # gitignore semantics for these patterns: a pattern matches a path component or the whole path.
    ignored = any(fnmatch.fnmatch(part, pattern) for pattern in patterns for part in parts) or any(
        fnmatch.fnmatch(path, pattern) for pattern in patterns
    )
    assert ignored is not published
