"""The orphan pass at scale: 1,500 open grants behind one subnet NSG (30 people on each of 50 VMs), orphans
planted beside them, then one sweep; nothing an open grant holds may leave, and nothing may be added.

The open grants are recorded with the store's own entity builders (grant record, `principals`, `expiry` and
both `open` rows, as `GrantStore.create` + `open_rows` leave an active grant) over plain HTTP (`bench.seed`),
and the NSG is written by the broker's reconciler from them (one pass, checked: every grant placed). The
orphans are written by a conditional whole-NSG PUT, as someone (or a crashed broker) would leave them:

- a source nobody holds added to a broker rule that also holds thirty open grants (must be trimmed),
- a broker rule for a port no grant opened (must be deleted),
- a broker rule whose name says it expired an hour ago (must be deleted).

The sweep runs in this process, built by `jitbroker.runtime.build_backend` as the timer builds it, at the
real clock (nothing is due). Then the NSG is read back and compared rule by rule with what it held before.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import crowd, scenarios, seed
from bench.lab import BenchLab, arm_counts
from bench.table import Figure
from jitbroker.model import ConnectInfo, Grant, GrantStatus

VMS = 50
PER_VM = 30
OPEN = VMS * PER_VM
PREFIX = "benchorphans"
STRAY_SOURCE = "198.51.100.250/32"  # in no open grant
ORPHAN_PORT = 3389


def orphan_figures(workdir: Path) -> list[Figure]:
    """1,500 open grants, three planted orphans, one sweep: what it stripped, added and removed."""
    world = scenarios.write_scenario(scenarios.subnet_world(VMS), workdir / "orphans")
    nsg_id = scenarios.nsg_id()
    with BenchLab(world, scenarios.scope()) as lab:
        backend = lab.backend(PREFIX)
        grants = list(_open_grants(nsg_id))
        seed.insert_all(seed.RawTables(lab.azurite.table_endpoint), _open_rows(grants))
        backend.store.note_nsgs([nsg_id])  # what `GrantStore.create` does: the orphan pass visits this NSG
        recorded = backend.store.openings(nsg_id)
        if len(recorded) != OPEN:
            raise RuntimeError(f"the store lists {len(recorded)} open grants behind the NSG, not {OPEN}")
        placed = backend.reconciler.reconcile(nsg_id)
        unplaced = [g.id for g in grants if placed.plan.rule_for(g.id) is None]
        if unplaced or placed.plan.refused:
            raise RuntimeError(f"the reconciler did not place {len(unplaced)} grants: {placed.plan.refused}")
        planted = _plant_orphans(backend, nsg_id)
        before = _rules(backend.reconciler.read(nsg_id))

        lab.admin.clear_requests()
        started = time.perf_counter()
        report = backend.sweeper.run()
        seconds = time.perf_counter() - started
        writes = arm_counts(lab.admin.requests())["nsg_writes"]
        after = _rules(backend.reconciler.read(nsg_id))
        read_ms = _timed_ms(lambda: backend.store.openings(nsg_id))
        grant_ms = _grant_ms(lab)

    stripped = [g.id for g in grants if not _holds(after, g)]
    added = sum(len(sources - before.get(name, (None, set()))[1]) for name, (_, sources) in after.items())
    added_rules = [name for name in after if name not in before]
    left = [o for o in planted if _orphan_left(after, o)]
    return [
        Figure(
            f"{OPEN:,} open grants, then a sweep with orphans present",
            f"{len(stripped)} of {OPEN:,} open grants' sources stripped, {added} sources added "
            f"({len(added_rules)} new rules); {len(planted) - len(left)}/{len(planted)} orphans removed; "
            f"sweep {seconds:.2f} s, {writes} NSG write{'s' if writes != 1 else ''}"
            + (f"; errors: {report.errors[:2]}" if report.errors else ""),
            "0 sources stripped from open grants, 0 added anywhere",
            not stripped and added == 0 and not added_rules,
        ),
        Figure(
            f"A grant with {OPEN:,} open grants behind its NSG, latency 0",
            f"p50 {statistics.median(grant_ms):.0f} ms over {len(grant_ms)} grants (HTTP); one read of the "
            f"NSG's open index: {read_ms:.0f} ms (3 such reads per grant)",
            "report",
            None,
        ),
    ]


def _timed_ms(call: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _grant_ms(lab: BenchLab) -> list[float]:
    """Warm grants on vm-001 by people holding none there yet, through a broker process on the same tables."""
    # Each of the 150 people already holds 10 of the 1,500 grants: the per-person cap would refuse an 11th.
    broker = lab.broker(PREFIX, JIT_ARM_POLL_SECONDS="0.05", JIT_MAX_OPEN_GRANTS_PER_PRINCIPAL="1000")
    walls = []
    for index in range(PER_VM, PER_VM + 6):  # the first warms the broker (build, token, topology)
        status, seconds, body = lab.grant(broker, crowd.member(index), {"vm": scenarios.vm_name(0)})
        if status != 201:
            raise RuntimeError(f"a grant beside {OPEN:,} open ones failed: {status} {body}")
        walls.append(seconds * 1000)
    return walls[1:]


def _open_grants(nsg_id: str) -> Iterator[Grant]:
    """30 distinct people on each of 50 VMs (each person on 10 VMs), open for another hour or more."""
    now = datetime.now(UTC).replace(microsecond=0)
    for vm in range(VMS):
        name = scenarios.vm_name(vm)
        private_ip = f"192.0.2.{10 + vm}"
        for slot in range(PER_VM):
            who = crowd.member((vm * PER_VM + slot) % crowd.MAX_MEMBERS)
            created = now - timedelta(minutes=30) + timedelta(seconds=vm * PER_VM + slot)
            yield Grant(
                id=f"g-open{vm:03d}x{slot:03d}",
                principal=who.oid,
                principal_name=who.upn,
                vm_id=f"{scenarios.scope()}/providers/Microsoft.Compute/virtualMachines/{name}",
                vm_name=name,
                port=22,
                protocol="ssh",
                source=who.source,
                status=GrantStatus.ACTIVE,
                created_at=created,
                expires_at=now + timedelta(hours=1, minutes=slot),
                updated_at=created,
                connect=ConnectInfo(
                    host=f"198.51.100.{10 + vm}",
                    public_ip=f"198.51.100.{10 + vm}",
                    fqdn=None,
                    private_ip=private_ip,
                    username="azureuser",
                    os="Linux",
                ),
                nsg_ids=(nsg_id,),
            )


def _open_rows(grants: list[Grant]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """What an active grant leaves in the store: record, `principals`, `expiry`, and its two `open` rows."""
    from jitbroker.store import _expiry_row, _grant_entity, _open_row, escape_key

    for grant in grants:
        yield (
            f"{PREFIX}principals",
            {
                "PartitionKey": escape_key(grant.principal),
                "RowKey": escape_key(grant.id),
                "grant_id": grant.id,
            },
            True,
        )
        yield f"{PREFIX}expiry", _expiry_row(grant), True
        yield f"{PREFIX}grants", _grant_entity(grant), False
        for nsg_id in (*grant.nsg_ids, None):
            yield f"{PREFIX}open", _open_row(grant, nsg_id), True


def _plant_orphans(backend: Any, nsg_id: str) -> list[tuple[str, str]]:
    """Write the three orphans with one conditional whole-NSG PUT; (rule name, source) of each."""
    from jitbroker import nsgplan
    from jitbroker.arm import parse_id
    from jitbroker.rules import describe, is_broker_rule, rule_name

    nsg = backend.reconciler.read(nsg_id)
    rules = [json.loads(json.dumps(r)) for r in nsg["properties"]["securityRules"]]
    ours = [r for r in rules if is_broker_rule(r)]
    taken = {int(r["properties"]["priority"]) for r in rules}
    free = iter(p for p in range(199, 99, -1) if p not in taken)
    host = ours[0]
    host["properties"]["sourceAddressPrefixes"] = [*host["properties"]["sourceAddressPrefixes"], STRAY_SOURCE]
    planted = [(host["name"], STRAY_SOURCE)]
    now = datetime.now(UTC).replace(microsecond=0)
    for private_ip, expires, source in (
        ("192.0.2.10", now + timedelta(hours=2), "198.51.100.251/32"),
        ("192.0.2.11", now - timedelta(hours=1), "198.51.100.252/32"),
    ):
        name = rule_name(private_ip, ORPHAN_PORT, expires)
        properties = {
            **{k: v for k, v in host["properties"].items() if k not in ("provisioningState",)},
            "priority": next(free),
            "destinationAddressPrefix": private_ip,
            "destinationPortRange": str(ORPHAN_PORT),
            "sourceAddressPrefixes": [source],
            "description": describe(vm_name="gone", expires_at=expires, sources=[source]),
        }
        properties.pop("sourceAddressPrefix", None)
        rules.append({"name": name, "properties": properties})
        planted.append((name, source))
    parsed = parse_id(nsg_id, "networkSecurityGroups")
    network = backend.clients.network_client(parsed.subscription)
    network.network_security_groups.begin_create_or_update(
        parsed.resource_group,
        parsed.name,
        io.BytesIO(json.dumps(nsgplan.put_body(nsg, rules)).encode()),
        content_type="application/json",
        headers={"If-Match": str(nsg["etag"])},
    ).result()
    after = _rules(backend.reconciler.read(nsg_id))
    missing = [o for o in planted if not _orphan_left(after, o)]
    if missing:
        raise RuntimeError(f"the orphans were not written: {missing}")
    return planted


def _rules(nsg: Mapping[str, Any]) -> dict[str, tuple[tuple[str, int], set[str]]]:
    """Rule name -> ((destination, port), sources) for every inbound rule of an NSG's ARM JSON."""
    found = {}
    for rule in (nsg.get("properties") or {}).get("securityRules") or []:
        props = rule.get("properties") or {}
        sources = set(props.get("sourceAddressPrefixes") or []) | (
            {props["sourceAddressPrefix"]} if props.get("sourceAddressPrefix") else set()
        )
        port = str(props.get("destinationPortRange") or "0")
        key = (str(props.get("destinationAddressPrefix") or ""), int(port) if port.isdigit() else 0)
        found[str(rule["name"])] = (key, sources)
    return found


def _holds(rules: dict[str, tuple[tuple[str, int], set[str]]], grant: Grant) -> bool:
    return any(
        key == (grant.private_ip, grant.port) and grant.source in sources for key, sources in rules.values()
    )


def _orphan_left(rules: dict[str, tuple[tuple[str, int], set[str]]], orphan: tuple[str, str]) -> bool:
    name, source = orphan
    return name in rules and source in rules[name][1]
