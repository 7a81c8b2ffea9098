"""Every Bicep file parses; the modules form one tree rooted at main.bicep, none dangling or orphaned."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.bicep import INFRA, bicep_files, module_paths, parse


def test_infra_has_a_main_template_and_its_modules():
    names = {path.relative_to(INFRA).as_posix() for path in bicep_files()}
    assert "main.bicep" in names
    assert len(names) > 1


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses_with_pycep(path: Path):
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path.name} declares nothing"


def test_every_module_reference_points_at_an_existing_file():
    missing = [
        f"{path.relative_to(INFRA)} -> {target}"
        for path in bicep_files()
        for target in module_paths(path)
        if not target.is_file()
    ]
    assert missing == []


def test_every_bicep_file_is_reachable_from_main():
    reachable: set[Path] = set()
    todo = [(INFRA / "main.bicep").resolve()]
    while todo:
        current = todo.pop()
        if current in reachable:
            continue
        reachable.add(current)
        todo.extend(module_paths(current))
    orphans = [p.relative_to(INFRA).as_posix() for p in bicep_files() if p.resolve() not in reachable]
    assert orphans == []


def test_main_targets_the_subscription_so_azd_creates_the_resource_group_and_the_role():
    assert parse(INFRA / "main.bicep")["globals"]["scope"]["value"] == "subscription"
