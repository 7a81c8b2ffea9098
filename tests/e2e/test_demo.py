"""`make demo` (`python -m lab.demo`): as root every check of its story holds; without root it says why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lab.broker import REPO_ROOT
from lab.netlab import can_run

NOBODY = 65534


def demo(*, as_uid: int | None = None, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    """Run the demo the way `make demo` does, optionally as another user."""
    prefix = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups"] if as_uid else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "lab.demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_without_root_the_demo_says_what_it_needs_and_exits_non_zero():
    done = demo(as_uid=NOBODY, timeout=60)

    assert done.returncode == 2
    assert "needs root" in done.stderr
    assert "sudo make demo" in done.stderr
    assert done.stdout == ""


@pytest.mark.netlab
@pytest.mark.skipif(can_run() is not None, reason=str(can_run()))
def test_the_demo_tells_the_whole_story_and_every_check_holds():
    done = demo()

    assert done.returncode == 0, done.stdout + done.stderr
    assert "every check held" in done.stdout
    for told in (
        "ran a command on web-01",
        "for alice's address only",
        "mallory's connection times out",
        "holds no broker rule any more",
        "recorded as expired",
        # prod-01 needs carol's approval
        "waits for carol",
        "prod-01-nsg holds no broker rule:",
        "got past prod-01-nsg",
        "the clock started at carol's yes",
        "ran a command on prod-01",
        "for bob's address only, expiring at approval + 30m",
        "bob's jit exited 0 after revoking",
        "prod-01-nsg holds no broker rule any more",
        "the receiver got requested, approved, granted for bob's grant, each signed",
    ):
        assert told in done.stdout
    assert "✘" not in done.stdout
