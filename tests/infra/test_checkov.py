"""checkov's Bicep checks pass on infra/, offline, and every suppression is used and carries its reason."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep import INFRA, ROOT, bicep_files

# checkov has a venv of its own (requirements-checkov.txt, installed by `make setup`): its dependency tree
# caps packages the broker needs newer, so it never shares the test venv.
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
SKIP_COMMENT = re.compile(r"//\s*checkov:skip=([A-Z0-9_]+):(.*)$")
# checkov must not call home: no update check, no policy download, no platform mapping.
OFFLINE_ENV = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA": "false"}


@pytest.fixture(scope="module")
def checkov_run() -> tuple[dict[str, Any], str]:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}; run `make setup`")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_API_KEY", "PRISMA_"))}
    env.update(OFFLINE_ENV)
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(INFRA), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    return (report[0] if isinstance(report, list) else report), proc.stderr


def _suppressions_in_source() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for path in bicep_files():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = SKIP_COMMENT.search(line)
            if match:
                found[(path.relative_to(INFRA).as_posix(), match.group(1))] = match.group(2).strip()
    return found


def test_checkov_finds_no_failed_check(checkov_run):
    report, _ = checkov_run
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert report["summary"]["passed"] > 0


def test_checkov_parses_every_file_and_runs_every_check_without_crashing(checkov_run):
    report, stderr = checkov_run
    assert report["summary"]["parsing_errors"] == 0
    assert "Failed to run check" not in stderr
    scanned = {Path(c["file_path"].lstrip("/")).as_posix() for c in report["results"]["passed_checks"]}
    assert "app/broker.bicep" in scanned
    assert "core/storage/storage-account.bicep" in scanned


def test_every_suppression_states_its_reason():
    weak = {where: reason for where, reason in _suppressions_in_source().items() if len(reason) < 25}
    assert weak == {}


def test_every_suppression_in_the_source_is_one_checkov_applied(checkov_run):
    report, _ = checkov_run
    skipped = report["results"]["skipped_checks"]
    applied = {(Path(c["file_path"].lstrip("/")).as_posix(), c["check_id"]) for c in skipped}
    stale = sorted(set(_suppressions_in_source()) - applied)
    assert stale == [], "suppressions for checks that no longer fire: remove them"
    unexplained = sorted(applied - set(_suppressions_in_source()))
    assert unexplained == []
