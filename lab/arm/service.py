"""What the emulated Azure does: reads of VMs and network resources, and NSG writes as long-running
operations.

`ArmService` knows nothing of HTTP: it takes names and bodies, returns ARM JSON, and raises `ArmError`. It
owns the world, the operations, and the subscribers told about every NSG change."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.arm import errors, render
from lab.arm.changes import Change, refresh_states
from lab.arm.concurrency import Admission, admit
from lab.arm.errors import ArmError
from lab.arm.knobs import Fault
from lab.arm.lro import Operation, OperationBook
from lab.arm.state import NETWORK, NsgRecord, RuleRecord, World, build_world, new_etag, resource_id
from lab.arm.validation import check_conflicts, check_limits, check_name, normalize_rule
from lab.scenario import POWER_STATES, AzureSpec

log = logging.getLogger(__name__)

NsgCallback = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class WriteContext:
    """How the front door wants a write carried out: its operation's length, the concurrency mode, an
    injected fault, and where operation status lives (for URLs in messages)."""

    lro_ms: int
    concurrency: str
    fault: Fault | None
    base_url: str
    api_version: str

    def status_url(self, op: Operation) -> str:
        """The Azure-AsyncOperation URL of `op` as a client would be given it."""
        return f"{self.base_url}{op.status_path()}?api-version={self.api_version}"


@dataclass(frozen=True)
class WriteResult:
    """A write accepted by the RP: status (200/201/202), body (None for 202), and its operation."""

    status: int
    body: dict[str, Any] | None
    operation: Operation


class ArmService:
    """The emulated Compute and Network resource providers."""

    def __init__(self, azure: AzureSpec) -> None:
        self._azure = azure
        self.world: World = build_world(azure)
        self.ops = OperationBook()
        self._in_flight: dict[str, Change] = {}  # operation id -> the change it carries
        self._subscribers: list[NsgCallback] = []
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._delivery = threading.Lock()

    # ---- subscribers ---------------------------------------------------------------------------------------

    def subscribe(self, callback: NsgCallback) -> None:
        """Call `callback(nsg_id, nsg_json)` after every NSG change, in order."""
        self._subscribers.append(callback)

    def _changed(self, nsg: NsgRecord) -> None:
        # Called with the world lock held: snapshot now so deliveries follow the order of changes.
        self._pending.append((nsg.id, render.nsg_json(self.world, nsg)))

    def deliver(self) -> None:
        """Hand pending NSG changes to subscribers, outside the world lock so callbacks may read the lab."""
        with self._delivery:
            while True:
                with self.world.lock:
                    if not self._pending:
                        return
                    nsg_id, body = self._pending.pop(0)
                for callback in list(self._subscribers):
                    try:
                        callback(nsg_id, body)
                    except Exception:
                        log.exception("NSG subscriber failed for %s", nsg_id)

    # ---- lookups -------------------------------------------------------------------------------------------

    def settle(self) -> None:
        """Finish due operations, then tell subscribers."""
        with self.world.lock:
            self.ops.settle()
        self.deliver()

    def check_scope(self, sub: str, rg: str | None = None) -> None:
        """404 unless the subscription (and resource group) exist."""
        if sub.lower() not in self.world.subscriptions:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        if (
            rg is not None
            and f"/subscriptions/{sub}/resourcegroups/{rg}".lower() not in self.world.resource_groups
        ):
            raise errors.resource_group_not_found(rg)

    def locations(self) -> list[str]:
        """The lab's locations (those of its resource groups), sorted."""
        with self.world.lock:
            return sorted({location for _, _, location in self.world.resource_groups.values()})

    def rg_location(self, sub: str, rg: str) -> str | None:
        """A resource group's location, None when there is no such group."""
        with self.world.lock:
            found = self.world.resource_groups.get(f"/subscriptions/{sub}/resourcegroups/{rg}".lower())
            return found[2] if found else None

    def _nsg(self, sub: str, rg: str, name: str) -> NsgRecord:
        self.check_scope(sub, rg)
        nsg = self.world.nsgs.get(resource_id(sub, rg, NETWORK, "networkSecurityGroups", name).lower())
        if nsg is None:
            raise errors.resource_not_found("Microsoft.Network/networkSecurityGroups", name, rg)
        return nsg

    # ---- Compute -------------------------------------------------------------------------------------------

    def get_vm(self, sub: str, rg: str, name: str, *, expand: str | None = None) -> dict[str, Any]:
        """`GET …/virtualMachines/{name}` (with `$expand=instanceView`)."""
        with self.world.lock:
            vm = self._vm(sub, rg, name)
            return render.vm_json(vm, expand_instance_view=(expand or "").lower() == "instanceview")

    def get_instance_view(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        """`GET …/virtualMachines/{name}/instanceView`."""
        with self.world.lock:
            return render.instance_view_json(self._vm(sub, rg, name))

    def list_vms(self, sub: str, rg: str | None) -> list[dict[str, Any]]:
        """VMs of a resource group, or of the whole subscription."""
        with self.world.lock:
            self.check_scope(sub, rg)
            return [
                render.vm_json(vm)
                for vm in self.world.vms.values()
                if vm.sub.lower() == sub.lower() and (rg is None or vm.rg.lower() == rg.lower())
            ]

    def _vm(self, sub: str, rg: str, name: str) -> Any:
        self.check_scope(sub, rg)
        vm = self.world.vms.get(resource_id(sub, rg, "Microsoft.Compute", "virtualMachines", name).lower())
        if vm is None:
            raise errors.resource_not_found("Microsoft.Compute/virtualMachines", name, rg)
        return vm

    def set_power(self, name: str, state: str) -> dict[str, Any]:
        """Change a VM's power state (the lab's stand-in for start/stop/deallocate)."""
        if state not in POWER_STATES:
            raise ValueError(f"state must be one of {', '.join(POWER_STATES)}")
        with self.world.lock:
            for vm in self.world.vms.values():
                if vm.spec.name.lower() == name.lower():
                    vm.power_state = state
                    return {"name": vm.spec.name, "id": vm.id, "power_state": state}
        raise KeyError(name)

    # ---- Network reads -------------------------------------------------------------------------------------

    def get_nic(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        """`GET …/networkInterfaces/{name}`."""
        with self.world.lock:
            self.check_scope(sub, rg)
            nic = self.world.nics.get(resource_id(sub, rg, NETWORK, "networkInterfaces", name).lower())
            if nic is None:
                raise errors.resource_not_found("Microsoft.Network/networkInterfaces", name, rg)
            return render.nic_json(self.world, nic)

    def get_public_ip(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        """`GET …/publicIPAddresses/{name}`."""
        with self.world.lock:
            self.check_scope(sub, rg)
            pip = self.world.public_ips.get(resource_id(sub, rg, NETWORK, "publicIPAddresses", name).lower())
            if pip is None:
                raise errors.resource_not_found("Microsoft.Network/publicIPAddresses", name, rg)
            return render.public_ip_json(self.world, pip)

    def get_subnet(self, sub: str, rg: str, vnet: str, name: str) -> dict[str, Any]:
        """`GET …/virtualNetworks/{vnet}/subnets/{name}`."""
        with self.world.lock:
            self.check_scope(sub, rg)
            vnet_id = resource_id(sub, rg, NETWORK, "virtualNetworks", vnet)
            if not any(
                s.vnet.lower() == vnet.lower() and s.rg.lower() == rg.lower()
                for s in self.world.subnets.values()
            ):
                raise errors.resource_not_found("Microsoft.Network/virtualNetworks", vnet, rg)
            subnet = self.world.subnets.get(f"{vnet_id}/subnets/{name}".lower())
            if subnet is None:
                raise errors.child_not_found(f"{vnet_id}/subnets/{name}")
            return render.subnet_json(self.world, subnet)

    def get_nsg(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        """`GET …/networkSecurityGroups/{name}`."""
        with self.world.lock:
            return render.nsg_json(self.world, self._nsg(sub, rg, name))

    def list_nsgs(self, sub: str, rg: str | None) -> list[dict[str, Any]]:
        """NSGs of a resource group, or of the whole subscription."""
        with self.world.lock:
            self.check_scope(sub, rg)
            return [
                render.nsg_json(self.world, nsg)
                for nsg in self.world.nsgs.values()
                if nsg.sub.lower() == sub.lower() and (rg is None or nsg.rg.lower() == rg.lower())
            ]

    def all_nsgs(self) -> list[dict[str, Any]]:
        """Every NSG's ARM JSON (the admin view)."""
        with self.world.lock:
            return [render.nsg_json(self.world, nsg) for nsg in self.world.nsgs.values()]

    def get_rule(self, sub: str, rg: str, nsg_name: str, name: str) -> dict[str, Any]:
        """`GET …/securityRules/{name}`."""
        with self.world.lock:
            nsg = self._nsg(sub, rg, nsg_name)
            rule = nsg.rule(name)
            if rule is None:
                raise errors.child_not_found(nsg.rule_id(name))
            return render.rule_json(nsg, rule)

    def list_rules(self, sub: str, rg: str, nsg_name: str) -> list[dict[str, Any]]:
        """`GET …/securityRules`."""
        with self.world.lock:
            nsg = self._nsg(sub, rg, nsg_name)
            return [render.rule_json(nsg, r) for r in nsg.rules.values()]

    def default_rules(self, sub: str, rg: str, nsg_name: str, name: str | None) -> Any:
        """`GET …/defaultSecurityRules[/{name}]`."""
        with self.world.lock:
            nsg = self._nsg(sub, rg, nsg_name)
            rules = render.default_rules_json(nsg)
            if name is None:
                return rules
            for rule in rules:
                if rule["name"].lower() == name.lower():
                    return rule
            raise errors.child_not_found(f"{nsg.id}/defaultSecurityRules/{name}")

    def operation(self, sub: str, op_id: str) -> Operation:
        """An operation by id (404 when unknown)."""
        with self.world.lock:
            op = self.ops.get(op_id)
            if op is None or op.sub.lower() != sub.lower():
                raise errors.child_not_found(
                    f"/subscriptions/{sub}/providers/Microsoft.Network/operations/{op_id}"
                )
            return op

    # ---- Network writes ------------------------------------------------------------------------------------

    def put_rule(
        self, sub: str, rg: str, nsg_name: str, name: str, *, body: Any, ctx: WriteContext
    ) -> WriteResult:
        """`PUT …/securityRules/{name}`: validate, write it `Updating`, and start its operation."""
        with self.world.lock:
            nsg = self._nsg(sub, rg, nsg_name)
            check_name(name)
            if not isinstance(body, Mapping):
                raise errors.invalid_request_format("The request body must be a JSON object.")
            rule_id = nsg.rule_id(name)
            props = normalize_rule(rule_id, body.get("properties"))
            others = [(nsg.rule_id(r.name), r.properties) for k, r in nsg.rules.items() if k != name.lower()]
            check_conflicts(rule_id, props, others)
            check_limits(nsg.id, [p for _, p in others] + [props])
            admission = self._admit(nsg, ctx)
            previous = nsg.rule(name)
            record = RuleRecord(previous.name if previous else name, props, "Updating")
            change = Change(nsg)
            change.put_rule(name.lower(), record)
            op = self._start(change, "PutSecurityRuleOperation", ctx, admission)
            return WriteResult(200 if previous else 201, render.rule_json(nsg, record), op)

    def delete_rule(
        self, sub: str, rg: str, nsg_name: str, name: str, *, ctx: WriteContext
    ) -> WriteResult | None:
        """`DELETE …/securityRules/{name}`: None (204) when there is no such rule, else 202 and an LRO."""
        with self.world.lock:
            nsg = self._nsg(sub, rg, nsg_name)
            if nsg.rule(name) is None:
                return None
            admission = self._admit(nsg, ctx)
            change = Change(nsg)
            change.delete_rule(name.lower())
            op = self._start(change, "DeleteSecurityRuleOperation", ctx, admission)
            return WriteResult(202, None, op)

    def put_nsg(
        self,
        sub: str,
        rg: str,
        name: str,
        *,
        body: Any,
        ctx: WriteContext,
        if_match: str | None,
        if_none_match: str | None,
    ) -> WriteResult:
        """`PUT …/networkSecurityGroups/{name}`: replace the whole NSG (honouring If-Match) or create it.

        Read-only parts of the body (etags, ids, provisioning states, `resourceGuid`, default rules, subnet
        and NIC references) are ignored, so a GET's JSON can be sent back as it is. A rule whose properties
        come back unchanged keeps its record, so it reads back exactly as before.
        """
        with self.world.lock:
            self.check_scope(sub, rg)
            nid = resource_id(sub, rg, NETWORK, "networkSecurityGroups", name)
            existing = self.world.nsgs.get(nid.lower())
            if if_match is not None and not _matches(if_match, existing):
                # No NSG at all: the same answer with no etag to show (assumed; only a mismatch was recorded).
                raise errors.precondition_failed(if_match, existing.etag if existing else "", nid)
            if if_none_match is not None and if_none_match.strip() == "*" and existing is not None:
                raise errors.already_exists(existing.id)
            check_name(name)
            if not isinstance(body, Mapping):
                raise errors.invalid_request_format("The request body must be a JSON object.")
            properties = body.get("properties") or {}
            if not isinstance(properties, Mapping):
                raise errors.invalid_request_format("Property 'properties' must be an object.")
            location = body.get("location") or (existing.location if existing else None)
            if location is None:
                raise ArmError(
                    400, "LocationRequired", "The location property is required for this definition."
                )
            rules = self._rules_of(nid, properties.get("securityRules") or [], existing)
            admission = self._admit(existing, ctx) if existing is not None else Admission()
            nsg = existing or NsgRecord(nid, name, sub, rg, location, new_etag(), _guid())
            self.world.nsgs[nid.lower()] = nsg
            change = Change(nsg, created=existing is None)
            change.replace_rules(rules)
            tags = body.get("tags") if "tags" in body else nsg.tags
            change.set_settings(
                bool(properties.get("flushConnection", nsg.flush_connection)), dict(tags or {})
            )
            op = self._start(change, "PutNetworkSecurityGroupOperation", ctx, admission)
            return WriteResult(200 if existing else 201, render.nsg_json(self.world, nsg), op)

    def _rules_of(self, nid: str, raw_rules: Any, existing: NsgRecord | None) -> dict[str, RuleRecord]:
        """A whole-NSG PUT's `securityRules`, validated like rule PUTs; settled, unchanged rules keep their
        record."""
        if not isinstance(raw_rules, list):
            raise errors.invalid_request_format("Property 'securityRules' must be a list.")
        rules: dict[str, RuleRecord] = {}
        seen: list[tuple[str, dict[str, Any]]] = []
        for raw in raw_rules:
            rule_name = raw.get("name") if isinstance(raw, Mapping) else None
            if not isinstance(rule_name, str):
                raise errors.invalid_request_format("Every security rule needs a name.")
            check_name(rule_name)
            rule_id = f"{nid}/securityRules/{rule_name}"
            props = normalize_rule(rule_id, raw.get("properties"))
            check_conflicts(rule_id, props, seen)
            seen.append((rule_id, props))
            current = existing.rule(rule_name) if existing else None
            # A rule some operation still owns gets a record of this write's own, so that operation's rollback
            # cannot take it back from under this write.
            if current is not None and current.properties == props and current.state == "Succeeded":
                rules[rule_name.lower()] = current
            else:
                rules[rule_name.lower()] = RuleRecord(rule_name, props, "Updating")
        check_limits(nid, [p for _, p in seen])
        return rules

    def _admit(self, nsg: NsgRecord, ctx: WriteContext) -> Admission:
        return admit(
            ctx.concurrency,
            self.ops.running(nsg.id.lower()),
            resource_guid=nsg.resource_guid,
            status_url=ctx.status_url,
            now=self.ops.clock(),
        )

    def _start(self, change: Change, op_name: str, ctx: WriteContext, admission: Admission) -> Operation:
        """Register the write's operation, cancel the ones it supersedes, and publish the NSG as it now is."""
        nsg = change.nsg
        fault, failure = ctx.fault, admission.failure
        if fault is not None and fault.lro_status is not None:
            outcome, code, message = fault.lro_status, fault.code, fault.message
        elif failure is not None:
            outcome, code, message = "Failed", failure.code, failure.message
        else:
            outcome, code, message = "Succeeded", None, None
        op = self.ops.start(
            nsg_key=nsg.id.lower(),
            name=op_name,
            sub=nsg.sub,
            location=nsg.location,
            duration_ms=ctx.lro_ms,
            outcome=outcome,
            error_code=code,
            error_message=message,
            finish=self._finish,
        )
        for old in admission.supersedes:
            old.supersede(by=op)
            carried = self._in_flight.pop(old.id, None)
            if carried is not None:
                change.carried.append(carried)
        self._in_flight[op.id] = change
        nsg.touch()
        self._refresh(nsg)
        self._changed(nsg)
        return op

    def _finish(self, op: Operation) -> None:
        """An operation settled (world lock held): commit or revert its change, then publish the NSG."""
        change = self._in_flight.pop(op.id, None)
        if change is None:
            return
        nsg = change.nsg
        key = nsg.id.lower()
        if self.world.nsgs.get(key) is not nsg:
            return
        if op.status == "Succeeded":
            change.commit()
        else:
            change.revert()
            if change.created:
                del self.world.nsgs[key]
                return
        nsg.touch()
        self._refresh(nsg)
        self._changed(nsg)

    def _refresh(self, nsg: NsgRecord) -> None:
        refresh_states(nsg, (c for c in self._in_flight.values() if c.nsg is nsg))

    # ---- lab control ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the scenario's world, with no operations; subscribers hear about every NSG."""
        with self.world.lock:
            fresh = build_world(self._azure)
            self.ops.clear()
            self._in_flight.clear()
            w = self.world
            w.subscriptions, w.resource_groups = fresh.subscriptions, fresh.resource_groups
            w.vms, w.nics, w.public_ips, w.subnets, w.nsgs = (
                fresh.vms,
                fresh.nics,
                fresh.public_ips,
                fresh.subnets,
                fresh.nsgs,
            )
            for nsg in w.nsgs.values():
                self._changed(nsg)
        self.deliver()


def _guid() -> str:
    return str(uuid.uuid4())


def _matches(if_match: str, nsg: NsgRecord | None) -> bool:
    """`If-Match` holds: `*` for any existing NSG, else its etag (compared as NRP quotes it, weak)."""
    if nsg is None:
        return False
    return if_match.strip() == "*" or errors.weak_etag(if_match) == nsg.etag
