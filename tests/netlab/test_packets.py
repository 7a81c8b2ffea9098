"""With real packets: NSG rules written through the ARM emulator open and close ports in the network lab.

Addresses: alice 203.0.113.10, mallory 203.0.113.66; web-01 198.51.100.10 -> 192.0.2.4 (NIC NSG web-01-nsg);
db-01 198.51.100.12 -> 192.0.2.21 (NIC NSG db-01-nsg with flushConnection, subnet NSG app-subnet-nsg);
win-01 198.51.100.11 -> 192.0.2.20 (subnet NSG app-subnet-nsg only);
v6-01 2001:db8:ffff::16 -> 2001:db8:0:1::4 (NIC NSG v6-01-nsg).
Every NSG starts with `deny-management-inbound` (22, 3389 from anywhere, priority 4000).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytestmark = pytest.mark.netlab

WEB = "198.51.100.10"
WIN = "198.51.100.11"
DB = "198.51.100.12"
V6_PUBLIC = "2001:db8:ffff::16"
ALICE = "203.0.113.10"
ALICE_V6 = "2001:db8:203::a"
CLOSED_WAIT = 1.5  # seconds a dropped SYN is given before we call the port closed


def test_with_only_the_scenario_rules_nobody_reaches_a_management_port(net):
    probes = [
        (who, host, port)
        for who in ("alice", "bob", "mallory")
        for host, port in ((WEB, 22), (WEB, 3389), (DB, 22), (WIN, 3389))
    ]

    with ThreadPoolExecutor(len(probes)) as pool:
        seen = list(pool.map(lambda p: net.probe(*p, timeout=CLOSED_WAIT), probes))

    assert seen == ["filtered"] * len(probes)


def test_an_allow_rule_for_alice_lets_her_run_ssh_while_mallory_times_out(net, rules):
    rules.allow("web-01-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22, dest="192.0.2.4")

    with ThreadPoolExecutor(2) as pool:
        mallory = pool.submit(net.probe, "mallory", WEB, 22, CLOSED_WAIT)
        banner = net.banner("alice", WEB, 22)
        assert mallory.result() == "filtered"
    assert banner is not None and banner.startswith(b"SSH-2.0-OpenSSH")
    ran = net.run("alice", net.ssh_argv("web-01", "hostname; whoami"))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["web-01", "azureuser"]


def test_removing_the_rule_refuses_new_connections_but_the_live_session_goes_on(net, rules, open_session):
    rules.allow("web-01-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)
    session = open_session("alice", "web-01")
    assert session.ask("before") == "echo:before"

    rules.delete("web-01-nsg", "jit-alice-22")

    assert net.probe("alice", WEB, 22, CLOSED_WAIT) == "filtered"
    assert session.ask("after") == "echo:after"


def test_with_flush_connection_removing_the_rule_cuts_the_live_session(net, rules, open_session):
    # db-01's NIC NSG has flushConnection: true in the scenario; the subnet NSG must allow too.
    rules.allow("app-subnet-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)
    rules.allow("db-01-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)
    session = open_session("alice", "db-01")
    assert session.ask("before") == "echo:before"

    rules.delete("db-01-nsg", "jit-alice-22")

    assert session.ask("after", timeout=3) is None
    assert net.probe("alice", DB, 22, CLOSED_WAIT) == "filtered"


def test_flush_connection_reevaluates_live_flows_and_keeps_those_still_allowed(net, rules, open_session):
    rules.allow("app-subnet-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)
    rules.allow("db-01-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)
    session = open_session("alice", "db-01")
    assert session.ask("before") == "echo:before"

    rules.allow("db-01-nsg", "jit-bob-22", priority=101, source="203.0.113.11/32", port=22)

    assert session.ask("after") == "echo:after"


def test_nic_and_subnet_nsg_must_both_allow(net, rules):
    rules.allow("db-01-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)
    assert net.probe("alice", DB, 22, CLOSED_WAIT) == "filtered"

    rules.allow("app-subnet-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)
    assert net.probe("alice", DB, 22) == "open"


def test_a_higher_priority_deny_beats_the_allow(net, rules):
    rules.allow("web-01-nsg", "jit-alice-22", priority=110, source=f"{ALICE}/32", port=22)
    assert net.probe("alice", WEB, 22) == "open"

    rules.deny("web-01-nsg", "freeze-ssh", priority=105, source="*", port=22)

    assert net.probe("alice", WEB, 22, CLOSED_WAIT) == "filtered"


def test_rdp_port_answers_only_the_granted_address(net, rules):
    rules.allow(
        "app-subnet-nsg", "jit-alice-3389", priority=100, source=f"{ALICE}/32", port=3389, dest="192.0.2.20"
    )

    with ThreadPoolExecutor(2) as pool:
        mallory = pool.submit(net.probe, "mallory", WIN, 3389, CLOSED_WAIT)
        greeting = net.banner("alice", WIN, 3389)
        assert mallory.result() == "filtered"
    assert greeting == b"RDP stand-in on win-01\r\n"
    assert net.probe("alice", WIN, 22, CLOSED_WAIT) == "filtered"  # the grant is for one port


def test_ipv6_grant_reaches_the_vm_through_its_ipv6_public_address(net, rules):
    rules.allow("v6-01-nsg", "jit-alice-v6-22", priority=100, source=f"{ALICE_V6}/128", port=22)

    assert net.probe("alice", V6_PUBLIC, 22) == "open"
    assert net.probe("mallory", V6_PUBLIC, 22, CLOSED_WAIT) == "filtered"
    assert (
        net.probe("alice", "198.51.100.16", 22, CLOSED_WAIT) == "filtered"
    )  # an IPv6 rule opens no IPv4 door


def test_the_internet_tag_covers_callers_and_an_allowed_closed_port_is_refused_not_dropped(net):
    # web-01-nsg's scenario rule allow-https-inbound: Internet -> 192.0.2.4:443; nothing listens on 443.
    assert net.probe("mallory", WEB, 443) == "refused"
    assert net.probe("mallory", WEB, 8443, CLOSED_WAIT) == "filtered"


def test_callers_cannot_reach_private_addresses_directly(net, rules):
    rules.allow("web-01-nsg", "jit-alice-22", priority=100, source=f"{ALICE}/32", port=22)

    assert net.probe("alice", WEB, 22) == "open"
    assert net.probe("alice", "192.0.2.4", 22, CLOSED_WAIT) == "filtered"


def test_a_service_bound_to_the_host_address_sees_the_callers_real_address(net):
    import socket

    from lab.netlab import HOST_V4

    server = socket.socket()
    server.bind((HOST_V4, 0))
    server.listen(1)
    server.settimeout(5)
    port = server.getsockname()[1]
    try:
        client = net.connect("alice", HOST_V4, port)
        assert client is not None
        conn, peer = server.accept()
        conn.close()
        client.close()
    finally:
        server.close()

    assert peer[0] == ALICE


def test_every_rule_form_the_renderer_knows_is_accepted_by_nftables(net):
    forms: list[dict[str, Any]] = [
        {
            "protocol": "Udp",
            "sourceAddressPrefixes": ["203.0.113.0/28", "2001:db8:203::/64"],
            "destinationPortRange": "53",
        },
        {"protocol": "Icmp", "sourceAddressPrefix": "Internet", "destinationPortRange": "*"},
        {
            "protocol": "*",
            "sourceAddressPrefix": "VirtualNetwork",
            "destinationPortRanges": ["22", "1000-2000"],
        },
        {
            "protocol": "Tcp",
            "sourcePortRange": "1024-65535",
            "sourceAddressPrefix": "203.0.113.10",
            "destinationPortRange": "22",
        },
        {"protocol": "Esp", "sourceAddressPrefix": "*", "destinationPortRange": "*"},
    ]
    rules = [
        {
            "name": f"form-{i}",
            "properties": {
                "sourcePortRange": "*",
                "destinationAddressPrefix": "*",
                "access": "Allow",
                "priority": 200 + i,
                "direction": "Inbound",
                "sourceAddressPrefix": "*",
                **form,
            },
        }
        for i, form in enumerate(forms)
    ]
    nsg_id = net.topology.vm("web-01").nsg_path[0]

    net.apply_nsg(nsg_id, {"id": nsg_id, "name": "web-01-nsg", "properties": {"securityRules": rules}})

    listed = net.ruleset("web-01")
    assert all(f'"web-01-nsg/form-{i} {200 + i}"' in listed for i in range(len(forms)))
