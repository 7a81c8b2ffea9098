"""The network lab cleans up after itself, and after a run that was killed before it could."""

from __future__ import annotations

import subprocess
import time

import pytest

from lab.netlab import NetLab, NetlabError
from lab.netlab.netns import namespaces, pids_in, run

pytestmark = pytest.mark.netlab


def lab_namespaces() -> list[str]:
    return [name for name in namespaces() if name.startswith("jl-")]


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def test_leftovers_of_a_killed_run_are_removed_at_start(scenario):
    run(["ip", "netns", "add", "jl-vm-stale"])
    run(["ip", "link", "add", "jl-host", "type", "veth", "peer", "name", "jl-stale-peer"])
    stale = subprocess.Popen(["ip", "netns", "exec", "jl-vm-stale", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while stale.pid not in pids_in("jl-vm-stale") and time.monotonic() < deadline:
            time.sleep(0.02)  # until the leftover process really lives in the leftover namespace
        with NetLab(scenario, vms=["web-01"]):
            assert "jl-vm-stale" not in namespaces()
            assert stale.wait(timeout=10) != 0  # ended with its namespace
            assert not link_exists("jl-stale-peer")  # the stale jl-host went, and its peer with it
            assert link_exists("jl-host")  # the new lab's own
    finally:
        if stale.poll() is None:
            stale.kill()
        stale.wait(timeout=10)


def test_everything_the_lab_made_is_gone_after_it_exits(scenario):
    with NetLab(scenario, vms=["web-01"]) as lab:
        folder = lab.folder
        assert set(lab_namespaces()) >= {"jl-router", "jl-vm-web-01", "jl-c-alice", "jl-c-mallory"}
        assert link_exists("jl-host")
        assert lab.banner("alice", "198.51.100.10", 22, timeout=1.5) is None  # deny-management-inbound holds

    assert lab_namespaces() == []
    assert not link_exists("jl-host")
    assert not folder.exists()


def test_a_second_lab_on_the_same_machine_is_refused_instead_of_tearing_the_first_down(scenario):
    with NetLab(scenario, vms=["web-01"]):
        with pytest.raises(NetlabError, match="another network lab"):
            NetLab(scenario, vms=["web-01"]).start()
        assert "jl-vm-web-01" in namespaces()
