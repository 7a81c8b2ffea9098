"""Shared helpers for the broker's HTTP tests."""

from __future__ import annotations

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
