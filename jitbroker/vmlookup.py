"""Finding the VM a request names — by resource id, by subscription + resource group + name, or by a name
unique in the broker's scopes — and refusing, in words, what is not a VM's id or name before ARM is asked.

Split from the lifecycle (`jitbroker.grants`) because it is the one part of a request that reads the topology
by what a person typed; the checks keep a crafted id (another provider, `..` segments) from reaching ARM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

from jitbroker import policy
from jitbroker.arm import error_code
from jitbroker.errors import InvalidRequest, NotFound, UpstreamError, VmNotEligible
from jitbroker.model import VmTopology


class Topology(Protocol):
    """The part of `jitbroker.topology.Topology` a lookup reads."""

    def resolve(self, vm_id: str) -> VmTopology: ...
    def list_vms(self, scope: str) -> list[VmTopology]: ...


def find_vm(
    topology: Topology,
    scopes: Iterable[str],
    vm: str,
    *,
    resource_group: str | None = None,
    subscription: str | None = None,
) -> VmTopology:
    """The VM named by id, by subscription + resource group + name, or by a name unique in `scopes`."""
    scopes = tuple(scopes)
    name = vm.strip()
    if name.lower().startswith("/subscriptions/"):
        vm_id = name.rstrip("/")
    elif subscription and resource_group:
        vm_id = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{name}"
        )
    else:
        return _find_by_name(topology, scopes, name, resource_group, subscription)
    if not is_vm_id(vm_id):
        raise InvalidRequest(
            "vm is not a virtual machine: give its name or its resource id "
            "/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Compute/virtualMachines/<name>"
        )
    if not policy.in_allowed_scope(vm_id, scopes):
        raise VmNotEligible("that VM is outside the subscriptions and resource groups this broker serves")
    vm_name = vm_id.rsplit("/", 1)[-1]
    if not is_vm_name(vm_name):
        raise InvalidRequest(_bad_vm_name(vm_name))
    try:
        return topology.resolve(vm_id)
    except UpstreamError as err:
        if _arm_refused_the_name(err):
            raise InvalidRequest(_bad_vm_name(vm_name)) from err
        raise


def _find_by_name(
    topology: Topology,
    scopes: tuple[str, ...],
    name: str,
    resource_group: str | None,
    subscription: str | None,
) -> VmTopology:
    matches: dict[str, VmTopology] = {}
    for scope in scopes:
        for vm in topology.list_vms(scope):
            if vm.name.lower() != name.lower():
                continue
            if resource_group and vm.resource_group.lower() != resource_group.lower():
                continue
            if subscription and vm.subscription.lower() != subscription.lower():
                continue
            matches[vm.vm_id.lower()] = vm
    if not matches:
        raise NotFound(f"no VM named {name!r} in the subscriptions and resource groups this broker serves")
    if len(matches) > 1:
        raise InvalidRequest(
            f"more than one VM is named {name!r}: add resource_group (and subscription) or use its id"
        )
    (listed,) = matches.values()
    # Resolved once here: a request reads the VM's addresses and NSGs many times, and a listed VM would read
    # them through the topology cache at each use (ARM again each time when the cache is off).
    return topology.resolve(listed.vm_id)


def is_vm_id(vm_id: str) -> bool:
    """Exactly a VM's id: no `..`, empty or extra segments, no other provider or type riding in front."""
    parts = vm_id.split("/")
    fixed = [
        "",
        "subscriptions",
        None,
        "resourcegroups",
        None,
        "providers",
        "microsoft.compute",
        "virtualmachines",
    ]
    return (
        len(parts) == len(fixed) + 1
        and all(want is None or part.lower() == want for part, want in zip(parts, fixed, strict=False))
        and all(part and part not in (".", "..") for part in parts[1:])
    )


# What ARM accepts in a VM's name, loosely (ARM has the last word): 1-64 characters, no whitespace or control
# characters, none of ARM's forbidden punctuation, not ending in a period or hyphen.
_VM_NAME_FORBIDDEN = re.compile(r"[\s~!@#$%^&*()=+\[\]{}\\|;:'\",<>/?`]")


def is_vm_name(name: str) -> bool:
    """A name ARM could accept for a VM (loosely: ARM has the last word)."""
    return (
        0 < len(name) <= 64
        and name.isprintable()
        and not _VM_NAME_FORBIDDEN.search(name)
        and not name.endswith((".", "-"))
    )


def _bad_vm_name(name: str) -> str:
    return (
        f"{name!r} is not a name Azure accepts for a VM (1-64 letters, digits, '_', '.' or '-', not "
        "ending in '.' or '-'): give the VM's name or its resource id"
    )


def _arm_refused_the_name(err: UpstreamError) -> bool:
    """ARM answered 400 to reading the VM because of its name (InvalidResourceName and the like): the
    caller's mistake, not Azure failing."""
    cause = err.__cause__
    if cause is None or getattr(cause, "status_code", None) != 400:
        return False
    return error_code(cause).startswith("InvalidResource")
