"""The default rotation of concurrency modes over the fault matrix's cells (`matrix.modes_for`): one mode per
cell, yet every step, every fault and every path meets every mode, so a step added to the matrix (the approval
path's) is not tried under one mode only. No lab: these only read the matrix's definition."""

from __future__ import annotations

import pytest

from tests.reliability.matrix import MODES, CellResult, Fault, Matrix, Path, Step, modes_for


def rotation() -> dict[tuple[Step, Fault], tuple[str, ...]]:
    """The modes of every cell when no selection is made."""
    return {(step, fault): modes_for(step, fault, "rotate") for step in Step for fault in Fault}


def test_rotation_runs_each_cell_once() -> None:
    assert all(len(modes) == 1 for modes in rotation().values())


@pytest.mark.parametrize("step", list(Step), ids=lambda s: s.name.lower())
def test_every_step_meets_every_mode(step: Step) -> None:
    met = {mode for (s, _), modes in rotation().items() if s is step for mode in modes}
    assert met == set(MODES)


@pytest.mark.parametrize("fault", list(Fault), ids=lambda f: f.name.lower())
def test_every_fault_meets_every_mode(fault: Fault) -> None:
    met = {mode for (_, f), modes in rotation().items() if f is fault for mode in modes}
    assert met == set(MODES)


@pytest.mark.parametrize("path", list(Path), ids=lambda p: p.value)
def test_every_path_meets_every_mode(path: Path) -> None:
    met = {mode for (s, _), modes in rotation().items() if s.path is path for mode in modes}
    assert met == set(MODES)


def test_all_runs_every_cell_under_every_mode() -> None:
    assert all(modes_for(step, fault, "all") == MODES for step in Step for fault in Fault)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown modes"):
        modes_for(Step.APPROVAL_RECORDED, Fault.CRASH, "reject,sideways")


def test_the_printed_matrix_lines_up_under_its_header_for_the_longest_step() -> None:
    """Every row's fault and mode stand under their headings, whichever step the row is."""
    matrix = Matrix()
    longest = max(Step, key=lambda step: len(step.value))
    for step in (Step.RECORDED, longest):
        matrix.add(CellResult(step, Fault.ARM_HUNG, MODES[0], checks={"held": ""}))
    head, _, *rows = matrix.lines()
    fault_at, mode_at = head.index("fault"), head.index("mode")
    for row in rows[:2]:
        assert row[fault_at:].startswith(Fault.ARM_HUNG.value), row
        assert row[mode_at:].startswith(MODES[0]), row
