"""A broker process that has just started reads its VMs' network resources from many threads at once, as a
scaled-out instance meeting a burst does: `python -m tests.reliability.cold_resolve` builds the broker from
the environment (`jitbroker.runtime.build`), then has thirty threads turn the ARM documents topology reads
(a VM, a NIC, a public IP, a subnet) into the SDK models the broker reads them as, all at the same moment,
and prints one line of JSON: the errors met (an empty list when there were none).

Threads switch far more often than by default (`sys.setswitchinterval`), so an interleaving that a burst
meets now and then shows up within a few processes.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

from jitbroker.config import Settings
from jitbroker.runtime import build

SWITCH_INTERVAL_S = 1e-6
THREADS = 30
RG = "/subscriptions/s/resourceGroups/r/providers"
VM = {
    "id": f"{RG}/Microsoft.Compute/virtualMachines/vm-001",
    "name": "vm-001",
    "location": "westeurope",
    "tags": {"jit-ports": "22"},
    "properties": {
        "storageProfile": {"osDisk": {"osType": "Linux", "createOption": "FromImage"}},
        "osProfile": {"adminUsername": "azureuser", "computerName": "vm-001"},
        "networkProfile": {"networkInterfaces": [{"id": f"{RG}/Microsoft.Network/networkInterfaces/n"}]},
        "instanceView": {
            "statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}]
        },
    },
}
NIC = {
    "id": f"{RG}/Microsoft.Network/networkInterfaces/n",
    "name": "n",
    "location": "westeurope",
    "properties": {
        "ipConfigurations": [
            {
                "id": f"{RG}/Microsoft.Network/networkInterfaces/n/ipConfigurations/ipconfig1",
                "name": "ipconfig1",
                "properties": {
                    "privateIPAddress": "192.0.2.10",
                    "privateIPAddressVersion": "IPv4",
                    "subnet": {"id": f"{RG}/Microsoft.Network/virtualNetworks/v/subnets/s"},
                    "publicIPAddress": {"id": f"{RG}/Microsoft.Network/publicIPAddresses/p"},
                },
            }
        ],
        "networkSecurityGroup": {"id": f"{RG}/Microsoft.Network/networkSecurityGroups/nsg"},
    },
}
PIP = {
    "id": f"{RG}/Microsoft.Network/publicIPAddresses/p",
    "name": "p",
    "properties": {"ipAddress": "198.51.100.10", "dnsSettings": {"fqdn": "vm-001.example"}},
}
SUBNET = {
    "id": f"{RG}/Microsoft.Network/virtualNetworks/v/subnets/s",
    "name": "s",
    "properties": {
        "addressPrefix": "192.0.2.0/25",
        "networkSecurityGroup": {"id": f"{RG}/Microsoft.Network/networkSecurityGroups/nsg"},
    },
}


def _readers() -> list[Callable[[], Any]]:
    """Each reads one document as the broker's SDK clients do, and the attributes topology uses."""
    from azure.mgmt.compute._utils.model_base import _deserialize as compute_model
    from azure.mgmt.compute.models import VirtualMachine
    from azure.mgmt.network._utils.model_base import _deserialize as network_model
    from azure.mgmt.network.models import NetworkInterface, PublicIPAddress, Subnet

    def vm() -> Any:
        model = compute_model(VirtualMachine, VM)
        statuses = [s.code for s in model.instance_view.statuses or []]
        refs = [r.id for r in model.network_profile.network_interfaces or []]
        return (model.storage_profile.os_disk.os_type, model.os_profile.admin_username, statuses, refs)

    def nic() -> Any:
        model = network_model(NetworkInterface, NIC)
        configs = [
            (c.private_ip_address, c.subnet.id, c.public_ip_address.id) for c in model.ip_configurations or []
        ]
        return (configs, model.network_security_group.id)

    def pip() -> Any:
        model = network_model(PublicIPAddress, PIP)
        return (model.ip_address, model.dns_settings.fqdn)

    def subnet() -> Any:
        return network_model(Subnet, SUBNET).network_security_group.id

    return [vm, nic, pip, subnet]


def main() -> int:
    """Build a broker, then read the documents from `THREADS` threads at once; print the errors as JSON."""
    build(Settings.from_env())
    readers = _readers()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def read(index: int) -> None:
        start.wait()
        try:
            readers[index % len(readers)]()
        except Exception as err:  # every error is the finding
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=read, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(errors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
