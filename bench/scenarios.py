"""Generated lab worlds: many VMs behind one subnet NSG, written as scenario files `lab.scenario` loads.

The tenant and users are the demo scenario's, so the session's token issuer signs for them. Addresses stay in
the documentation ranges: VMs in 192.0.2.0/25, public IPs in 198.51.100.0/24.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lab.scenario import DEMO_SCENARIO

SUBSCRIPTION = "00000000-0000-4000-8000-0000000000b7"
RESOURCE_GROUP = "rg-jit-crowd"
SUBNET_NSG = "crowd-subnet-nsg"
FOREIGN_RULE = "allow-https-from-partner"
MAX_VMS = 100  # 192.0.2.10 .. 192.0.2.109 fit the /25 below


def scope() -> str:
    """The broker's allowed scope for a generated world (`JIT_ALLOWED_SCOPES`)."""
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"


def nsg_id(name: str = SUBNET_NSG) -> str:
    """The resource id of an NSG in a generated world."""
    return f"{scope()}/providers/Microsoft.Network/networkSecurityGroups/{name}"


def vm_name(index: int) -> str:
    """The name of the `index`-th generated VM (0-based)."""
    return f"vm-{index + 1:03d}"


def subnet_world(running: int, *, stopped: int = 0, port: int = 22) -> dict[str, Any]:
    """A scenario with `running` opted-in VMs (plus `stopped` deallocated ones) sharing one subnet NSG.

    The NSG starts with a deny for management ports and one foreign allow rule the broker must never touch.
    """
    total = running + stopped
    if not 0 < total <= MAX_VMS:
        raise ValueError(f"a generated world holds 1..{MAX_VMS} VMs, not {total}")
    demo = json.loads(DEMO_SCENARIO.read_text(encoding="utf-8"))
    vms = [_vm(i, port, "running" if i < running else "deallocated") for i in range(total)]
    group = {
        "name": RESOURCE_GROUP,
        "vnets": [
            {
                "name": "vnet-crowd",
                "address_prefixes": ["192.0.2.0/25"],
                "subnets": [{"name": "crowd", "address_prefixes": ["192.0.2.0/25"], "nsg": SUBNET_NSG}],
            }
        ],
        "nsgs": [{"name": SUBNET_NSG, "rules": _nsg_rules(port)}],
        "vms": vms,
    }
    subscription = {"id": SUBSCRIPTION, "name": "jit-crowd", "resource_groups": [group]}
    azure = {"location": "westeurope", "subscriptions": [subscription]}
    return {"tenant": demo["tenant"], "users": demo["users"], "azure": azure}


def write_scenario(world: dict[str, Any], directory: Path) -> Path:
    """Write `world` as `scenario.json` in `directory` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scenario.json"
    path.write_text(json.dumps(world, indent=1), encoding="utf-8")
    return path


def _vm(index: int, port: int, power_state: str) -> dict[str, Any]:
    name = vm_name(index)
    return {
        "name": name,
        "os": "Linux",
        "admin_username": "azureuser",
        "size": "Standard_B2s",
        "power_state": power_state,
        "tags": {"jit-ports": str(port)},
        "nics": [
            {
                "name": f"{name}-nic",
                "ip_configs": [
                    {
                        "name": "ipconfig1",
                        "subnet": "vnet-crowd/crowd",
                        "private_ip": f"192.0.2.{10 + index}",
                        "public_ip": {"name": f"{name}-pip", "address": f"198.51.100.{10 + index}"},
                    }
                ],
            }
        ],
    }


def _nsg_rules(port: int) -> list[dict[str, Any]]:
    return [
        {
            "name": FOREIGN_RULE,
            "priority": 150,
            "direction": "Inbound",
            "access": "Allow",
            "protocol": "Tcp",
            "sourceAddressPrefix": "203.0.113.250",
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRange": "443",
            "description": "someone else's rule inside the broker's priority band",
        },
        {
            "name": "deny-management-inbound",
            "priority": 4000,
            "direction": "Inbound",
            "access": "Deny",
            "protocol": "Tcp",
            "sourceAddressPrefix": "*",
            "sourcePortRange": "*",
            "destinationAddressPrefix": "*",
            "destinationPortRanges": sorted({"22", "3389", str(port)}),
        },
    ]
