"""Shared helpers for the broker's HTTP tests."""

from __future__ import annotations

import dataclasses
from typing import Any

SUB = "00000000-0000-4000-8000-0000000000a1"
RG = "rg-jit-demo"


def nsg_id(name: str) -> str:
    """The demo scenario's NSG resource id."""
    return (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkSecurityGroups/{name}"
    )


def security_rules(nsg: dict[str, Any]) -> list[dict[str, Any]]:
    """An NSG's (non-default) security rules as ARM JSON."""
    return list(nsg.get("properties", {}).get("securityRules", []))


def broker_rules(nsg: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules the broker wrote (by its naming), as ARM JSON."""
    return [r for r in security_rules(nsg) if r["name"].startswith("jit-")]


def others(nsg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule the broker did not write, without the etag ARM renews on every write to the NSG."""
    return [
        {k: v for k, v in r.items() if k != "etag"}
        for r in security_rules(nsg)
        if not r["name"].startswith("jit-")
    ]


def sources(rule: dict[str, Any]) -> set[str]:
    """A rule's source prefixes, whichever field holds them."""
    props = rule["properties"]
    many = props.get("sourceAddressPrefixes") or []
    return set(many) or {props["sourceAddressPrefix"]}


def retag(arm: Any, vm: str, tags: dict[str, str]) -> None:
    """Give a VM of the running emulator new tags, as its owner would in the portal (the world is restored
    from the scenario by `arm_admin` after the test)."""
    world = arm.service.world
    with world.lock:
        (record,) = [r for r in world.vms.values() if r.spec.name.lower() == vm.lower()]
        record.spec = dataclasses.replace(record.spec, tags=tags)
