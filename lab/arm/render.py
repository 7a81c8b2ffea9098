"""ARM's JSON shapes for the resources the emulator serves (checked against the REST API spec examples)."""

from __future__ import annotations

import hashlib
from typing import Any

from lab.arm.state import NicRecord, NsgRecord, PublicIpRecord, RuleRecord, SubnetRecord, VmRecord, World

RULE_TYPE = "Microsoft.Network/networkSecurityGroups/securityRules"
DEFAULT_RULE_TYPE = "Microsoft.Network/networkSecurityGroups/defaultSecurityRules"

# The six rules Azure puts in every NSG: name, priority, direction, access, source, destination, description.
DEFAULT_RULES = (
    ("AllowVnetInBound", 65000, "Inbound", "Allow", "VirtualNetwork", "VirtualNetwork",
     "Allow inbound traffic from all VMs in VNET"),
    ("AllowAzureLoadBalancerInBound", 65001, "Inbound", "Allow", "AzureLoadBalancer", "*",
     "Allow inbound traffic from azure load balancer"),
    ("DenyAllInBound", 65500, "Inbound", "Deny", "*", "*", "Deny all inbound traffic"),
    ("AllowVnetOutBound", 65000, "Outbound", "Allow", "VirtualNetwork", "VirtualNetwork",
     "Allow outbound traffic from all VMs to all VMs in VNET"),
    ("AllowInternetOutBound", 65001, "Outbound", "Allow", "*", "Internet",
     "Allow outbound traffic from all VMs to Internet"),
    ("DenyAllOutBound", 65500, "Outbound", "Deny", "*", "*", "Deny all outbound traffic"),
)  # fmt: skip

POWER_DISPLAY = {
    "running": "VM running",
    "stopped": "VM stopped",
    "deallocated": "VM deallocated",
    "starting": "VM starting",
    "stopping": "VM stopping",
    "deallocating": "VM deallocating",
}


def rule_json(nsg: NsgRecord, rule: RuleRecord) -> dict[str, Any]:
    """A security rule as `GET …/securityRules/{name}` returns it; it carries its NSG's etag."""
    return {
        "name": rule.name,
        "id": nsg.rule_id(rule.name),
        "etag": nsg.etag,
        "type": RULE_TYPE,
        "properties": {"provisioningState": rule.state, **rule.properties},
    }


def default_rules_json(nsg: NsgRecord) -> list[dict[str, Any]]:
    """The six default rules of an NSG."""
    return [
        {
            "name": name,
            "id": f"{nsg.id}/defaultSecurityRules/{name}",
            "etag": nsg.etag,
            "type": DEFAULT_RULE_TYPE,
            "properties": {
                "provisioningState": "Succeeded",
                "description": description,
                "protocol": "*",
                "sourcePortRange": "*",
                "destinationPortRange": "*",
                "sourceAddressPrefix": source,
                "destinationAddressPrefix": destination,
                "access": access,
                "priority": priority,
                "direction": direction,
                "sourcePortRanges": [],
                "destinationPortRanges": [],
                "sourceAddressPrefixes": [],
                "destinationAddressPrefixes": [],
            },
        }
        for name, priority, direction, access, source, destination, description in DEFAULT_RULES
    ]


def nsg_json(world: World, nsg: NsgRecord) -> dict[str, Any]:
    """An NSG with its rules, default rules and (read-only) NIC and subnet associations."""
    nics, subnets = world.nsg_associations(nsg.id.lower())
    body: dict[str, Any] = {
        "name": nsg.name,
        "id": nsg.id,
        "etag": nsg.etag,
        "type": "Microsoft.Network/networkSecurityGroups",
        "location": nsg.location,
    }
    if nsg.tags:
        body["tags"] = dict(nsg.tags)
    properties: dict[str, Any] = {
        "provisioningState": nsg.state,
        "resourceGuid": nsg.resource_guid,
        "flushConnection": nsg.flush_connection,
        "securityRules": [rule_json(nsg, r) for r in nsg.rules.values()],
        "defaultSecurityRules": default_rules_json(nsg),
    }
    if nics:
        properties["networkInterfaces"] = [{"id": i} for i in nics]
    if subnets:
        properties["subnets"] = [{"id": i} for i in subnets]
    body["properties"] = properties
    return body


def _mac(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "-".join(f"{b:02X}" for b in (0x00, 0x0D, 0x3A, *digest[:3]))


def nic_json(world: World, nic: NicRecord) -> dict[str, Any]:
    """A NIC with its ip configurations (IPv4 and IPv6), subnet, public IP and NSG references."""
    ip_configs = []
    for ipc, subnet_id, pip_id in nic.ip_configs:
        props: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "privateIPAddress": ipc.private_ip,
            "privateIPAllocationMethod": "Static",
            "subnet": {"id": subnet_id},
            "primary": ipc.primary,
            "privateIPAddressVersion": ipc.version,
        }
        if pip_id is not None:
            props["publicIPAddress"] = {"id": pip_id}
        ip_configs.append(
            {
                "name": ipc.name,
                "id": f"{nic.id}/ipConfigurations/{ipc.name}",
                "etag": nic.etag,
                "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                "properties": props,
            }
        )
    properties: dict[str, Any] = {
        "provisioningState": "Succeeded",
        "resourceGuid": nic.resource_guid,
        "ipConfigurations": ip_configs,
        "dnsSettings": {
            "dnsServers": [],
            "appliedDnsServers": [],
            "internalDomainNameSuffix": "lab.internal",
        },
        "macAddress": _mac(nic.id),
        "enableAcceleratedNetworking": False,
        "vnetEncryptionSupported": False,
        "enableIPForwarding": False,
        "disableTcpStateTracking": False,
        "primary": nic.primary,
        "virtualMachine": {"id": nic.vm_id},
        "hostedWorkloads": [],
        "tapConfigurations": [],
        "nicType": "Standard",
        "auxiliaryMode": "None",
        "auxiliarySku": "None",
    }
    if nic.nsg_id is not None:
        properties["networkSecurityGroup"] = {"id": nic.nsg_id}
    return {
        "name": nic.spec.name,
        "id": nic.id,
        "etag": nic.etag,
        "type": "Microsoft.Network/networkInterfaces",
        "location": nic.location,
        "kind": "Regular",
        "properties": properties,
    }


def public_ip_json(world: World, pip: PublicIpRecord) -> dict[str, Any]:
    """A public IP; a Dynamic address is absent while its VM is deallocated, as in Azure."""
    spec = pip.spec
    vm = world.vms.get(pip.vm_key)
    released = spec.allocation == "Dynamic" and vm is not None and vm.power_state == "deallocated"
    properties: dict[str, Any] = {
        "provisioningState": "Succeeded",
        "resourceGuid": pip.resource_guid,
        "publicIPAddressVersion": spec.version,
        "publicIPAllocationMethod": spec.allocation,
        "idleTimeoutInMinutes": 4,
        "ipTags": [],
        "ipConfiguration": {"id": pip.ip_config_id},
    }
    if spec.address and not released:
        properties["ipAddress"] = spec.address
    if spec.dns_label:
        properties["dnsSettings"] = {
            "domainNameLabel": spec.dns_label,
            "fqdn": f"{spec.dns_label}.{pip.location}.cloudapp.azure.com",
        }
    standard = spec.allocation == "Static"
    return {
        "name": spec.name,
        "id": pip.id,
        "etag": pip.etag,
        "location": pip.location,
        "type": "Microsoft.Network/publicIPAddresses",
        "sku": {"name": "Standard" if standard else "Basic", "tier": "Regional"},
        "properties": properties,
    }


def subnet_json(world: World, subnet: SubnetRecord) -> dict[str, Any]:
    """A subnet with its NSG reference and the ip configurations in it."""
    prefixes = list(subnet.spec.address_prefixes)
    properties: dict[str, Any] = {"provisioningState": "Succeeded"}
    if len(prefixes) == 1:
        properties["addressPrefix"] = prefixes[0]
    else:
        properties["addressPrefixes"] = prefixes
    if subnet.nsg_id is not None:
        properties["networkSecurityGroup"] = {"id": subnet.nsg_id}
    properties["ipConfigurations"] = [{"id": i} for i in subnet.ip_config_ids]
    properties["delegations"] = []
    properties["privateEndpointNetworkPolicies"] = "Disabled"
    properties["privateLinkServiceNetworkPolicies"] = "Enabled"
    return {
        "name": subnet.spec.name,
        "id": subnet.id,
        "etag": subnet.etag,
        "type": "Microsoft.Network/virtualNetworks/subnets",
        "properties": properties,
    }


def instance_view_json(vm: VmRecord) -> dict[str, Any]:
    """`…/instanceView` (also `properties.instanceView` with `$expand=instanceView`)."""
    running = vm.power_state == "running"
    view: dict[str, Any] = {}
    if running:
        view["computerName"] = vm.spec.name
        if vm.spec.os == "Windows":
            view.update(osName="Windows Server 2022 Datacenter", osVersion="10.0.20348")
        else:
            view.update(osName="ubuntu", osVersion="22.04")
        view["vmAgent"] = {
            "vmAgentVersion": "2.10.0.8",
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "level": "Info",
                    "displayStatus": "Ready",
                    "message": "Guest Agent is running",
                }
            ],
            "extensionHandlers": [],
        }
    view["hyperVGeneration"] = "V2"
    view["disks"] = [
        {
            "name": f"{vm.spec.name}-osdisk",
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                }
            ],
        }
    ]
    view["statuses"] = [
        {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"},
        {
            "code": f"PowerState/{vm.power_state}",
            "level": "Info",
            "displayStatus": POWER_DISPLAY.get(vm.power_state, vm.power_state),
        },
    ]
    return view


def vm_json(vm: VmRecord, *, expand_instance_view: bool = False) -> dict[str, Any]:
    """A virtual machine as `GET …/virtualMachines/{name}` returns it."""
    spec = vm.spec
    windows = spec.os == "Windows"
    os_profile: dict[str, Any] = {
        "computerName": spec.name,
        "adminUsername": spec.admin_username,
        "secrets": [],
        "allowExtensionOperations": True,
        "requireGuestProvisionSignal": True,
    }
    if windows:
        os_profile["windowsConfiguration"] = {"provisionVMAgent": True, "enableAutomaticUpdates": True}
    else:
        os_profile["linuxConfiguration"] = {
            "disablePasswordAuthentication": True,
            "ssh": {
                "publicKeys": [
                    {
                        "path": f"/home/{spec.admin_username}/.ssh/authorized_keys",
                        "keyData": "ssh-ed25519 AAAA lab",
                    }
                ]
            },
            "provisionVMAgent": True,
        }
    image = (
        {
            "publisher": "MicrosoftWindowsServer",
            "offer": "WindowsServer",
            "sku": "2022-datacenter-g2",
            "version": "latest",
        }
        if windows
        else {
            "publisher": "Canonical",
            "offer": "0001-com-ubuntu-server-jammy",
            "sku": "22_04-lts-gen2",
            "version": "latest",
        }
    )
    disk_name = f"{spec.name}-osdisk"
    properties: dict[str, Any] = {
        "vmId": vm.vm_id,
        "hardwareProfile": {"vmSize": spec.size},
        "storageProfile": {
            "imageReference": image,
            "osDisk": {
                "osType": spec.os,
                "name": disk_name,
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {
                    "storageAccountType": "Premium_LRS",
                    "id": f"/subscriptions/{vm.sub}/resourceGroups/{vm.rg}/providers/Microsoft.Compute/disks/"
                    f"{disk_name}",
                },
                "deleteOption": "Delete",
                "diskSizeGB": 30,
            },
            "dataDisks": [],
        },
        "osProfile": os_profile,
        "networkProfile": {
            "networkInterfaces": [
                {"id": nic_id, "properties": {"primary": index == 0, "deleteOption": "Detach"}}
                for index, nic_id in enumerate(vm.nic_ids)
            ]
        },
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
        "provisioningState": "Succeeded",
        "timeCreated": "2026-01-05T09:00:00.0000000+00:00",
    }
    if expand_instance_view:
        properties["instanceView"] = instance_view_json(vm)
    body: dict[str, Any] = {
        "name": spec.name,
        "id": vm.id,
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
    }
    if spec.tags:
        body["tags"] = dict(spec.tags)
    body["etag"] = '"1"'
    body["properties"] = properties
    return body
