"""Reading jit-broker's Bicep for the infra checks: where the files are and what pycep-parser sees."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
ROLE_ACTIONS_FILE = INFRA / "app" / "broker-role-actions.json"


def bicep_files() -> list[Path]:
    """Every `.bicep` file under `infra/`, sorted, so a new module is checked without editing a test."""
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    """pycep-parser's JSON view of one Bicep file (raises on a syntax error)."""
    return dict(BicepParser().parse(file_path=path))


def module_paths(path: Path) -> list[Path]:
    """The local module files a Bicep file references, resolved against its folder."""
    modules = parse(path).get("modules", {})
    return [
        (path.parent / module["detail"]["path"]).resolve()
        for module in modules.values()
        if module.get("type") == "local"
    ]


def role_actions() -> dict[str, list[str]]:
    """The broker's custom role permissions as Bicep loads them (`broker-role-actions.json`)."""
    data: dict[str, list[str]] = json.loads(ROLE_ACTIONS_FILE.read_text(encoding="utf-8"))
    return data
