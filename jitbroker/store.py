"""Grants, their indexes and the audit trail in Table Storage (`azure-data-tables`; Azurite in the lab).

Tables (all named `{prefix}...`):

    grants      PK = grant id                       the record; its ETag guards every state change
    expiry      PK = hour bucket, RK = expiry|id    open grants by expiry: "due before T" is a range read
    principals  PK = principal oid, RK = id         a person's grants
    open        PK = vm id|port, RK = id            open grants on one VM port (the coalesced rule's sources)
    audit       PK = grant id (or ~day), RK = time|uuid   append-only
    nsgs        PK = "nsg", RK = NSG id             every NSG the broker may have written to (orphan sweep)
    leases      PK = lease name, RK = "lease"       who may write one rule key now, until when (`lease`)

Index rows are written *before* the record changes and removed after it closes, so a crash can leave an
extra index row (dropped when next read) but never an open grant the sweeper cannot find. Keys are escaped;
every filter is parameterized. Storage failures become `UpstreamError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from jitbroker.errors import Conflict, JitError, NotFound, UpstreamError
from jitbroker.model import AuditEvent, ConnectInfo, Grant, GrantStatus, NsgRuleRef

Clock = Callable[[], datetime]

_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
_BUCKET = "%Y%m%d%H"
_GRANT_RK = "grant"
_NSG_PK = "nsg"
_MAX_KEY = 400  # Azurite refuses keys over 512 characters; Azure allows 1 KiB
_FORBIDDEN = frozenset("/\\#?%") | frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


def escape_key(value: str) -> str:
    """A Table Storage key for any string: `/ \\ # ?`, `%` and control characters percent-encoded.

    Very long values keep a readable prefix and a digest, so keys stay within every service's limit.
    """
    escaped = "".join(f"%{ord(ch):02X}" if ch in _FORBIDDEN else ch for ch in value)
    if len(escaped) > _MAX_KEY:
        digest = hashlib.sha256(value.encode()).hexdigest()
        escaped = f"{escaped[: _MAX_KEY - 70]}~{digest}"
    return escaped


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("store times must be timezone-aware")
    return moment.astimezone(UTC).strftime(_TIME)


def _parse(text: str) -> datetime:
    return datetime.strptime(text, _TIME).replace(tzinfo=UTC)


def _bucket(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_BUCKET)


def _same_source(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
    except ValueError:
        return a == b


class GrantStore:
    """Grant records, their indexes and the audit trail; every public method is safe across processes."""

    def __init__(self, table_service: TableServiceClient, *, prefix: str = "jit", clock: Clock) -> None:
        if not prefix.isalnum() or not prefix[:1].isalpha() or len(prefix) > 40:
            raise ValueError("the table prefix must be letters and digits, starting with a letter")
        self._service = table_service
        self._clock = clock
        self._names = {
            kind: f"{prefix}{kind}"
            for kind in ("grants", "expiry", "principals", "open", "audit", "nsgs", "leases")
        }
        self._tables = {kind: table_service.get_table_client(name) for kind, name in self._names.items()}
        self._known_nsgs: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ set-up

    def ensure_tables(self) -> None:
        """Create the broker's tables when missing (idempotent; run once at start)."""
        with _upstream("creating tables"):
            for name in self._names.values():
                self._service.create_table_if_not_exists(name)

    # ------------------------------------------------------------------ grants

    def create(self, grant: Grant) -> Grant:
        """Insert a new grant (and its index rows first); `Conflict` when the id already exists."""
        self._index(grant)
        try:
            with _upstream("recording the grant"):
                meta = self._t("grants").create_entity(_grant_entity(grant))
        except ResourceExistsError as err:
            raise Conflict(f"grant {grant.id} already exists") from err
        self.note_nsgs(ref.nsg_id for ref in grant.nsg_rules)
        return replace(grant, etag=meta.get("etag"))

    def get(self, grant_id: str) -> Grant:
        """The grant with this id, carrying its current etag; `NotFound` when there is none."""
        try:
            with _upstream("reading the grant"):
                entity = self._t("grants").get_entity(escape_key(grant_id), _GRANT_RK)
        except ResourceNotFoundError as err:
            raise NotFound(f"no grant {grant_id}") from err
        return _grant_from(entity)

    def replace(self, grant: Grant) -> Grant:
        """Store a new state of a grant read earlier; `Conflict` if it changed since (its etag is stale)."""
        if grant.etag is None:
            raise ValueError("replace needs the etag of the grant it was read as")
        if grant.status.is_open:
            self._index(grant, principal=False)
        try:
            with _upstream("updating the grant"):
                meta = self._t("grants").update_entity(
                    _grant_entity(grant),
                    mode=UpdateMode.REPLACE,
                    etag=grant.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except ResourceModifiedError as err:
            raise Conflict(f"grant {grant.id} was changed by someone else; read it again") from err
        except ResourceNotFoundError as err:
            raise NotFound(f"no grant {grant.id}") from err
        if not grant.status.is_open:
            self._unindex(grant)
        self.note_nsgs(ref.nsg_id for ref in grant.nsg_rules)
        return replace(grant, etag=meta.get("etag"))

    def list_for_principal(
        self, oid: str, status: GrantStatus | None = None, vm: str | None = None
    ) -> list[Grant]:
        """A person's grants, newest first, optionally only one status and one VM (name or resource id)."""
        rows = self._query("principals", "PartitionKey eq @pk", {"pk": escape_key(oid)})
        grants = self._load(str(row["grant_id"]) for row in rows)
        return _newest_first(g for g in grants if _matches(g, status, vm))

    def list_all(
        self, status: GrantStatus | None = None, vm: str | None = None, limit: int = 1000
    ) -> list[Grant]:
        """Every grant (admins), newest first, optionally one status and one VM (name or resource id)."""
        if status is not None:
            rows = self._query("grants", "status eq @status", {"status": str(status)})
        else:
            rows = self._list("grants")
        grants = [_grant_from(row) for row in rows]
        return _newest_first(g for g in grants if _matches(g, status, vm))[:limit]

    def open_for_vm_port(self, vm_id: str, port: int) -> list[Grant]:
        """Pending and active grants on one VM port: the sources its coalesced rule must hold."""
        pk = _vm_port_key(vm_id, port)
        rows = self._query("open", "PartitionKey eq @pk", {"pk": pk})
        result: list[Grant] = []
        for row in rows:
            grant = self._maybe_get(str(row["grant_id"]))
            if grant is None or not grant.status.is_open:
                if grant is not None or _abandoned(row):
                    self._delete_row("open", pk, str(row["RowKey"]))
                continue
            result.append(grant)
        return sorted(result, key=lambda g: (g.created_at, g.id))

    def find_open(self, principal: str, vm_id: str, port: int, source: str) -> Grant | None:
        """The caller's open grant for this VM, port and source, if any (idempotent re-requests)."""
        for grant in self.open_for_vm_port(vm_id, port):
            if grant.principal == principal and _same_source(grant.source, source):
                return grant
        return None

    def due(self, before: datetime, limit: int) -> list[Grant]:
        """Open grants whose expiry is at or before `before`, soonest first, at most `limit`.

        One range read over the expiry index, which holds open grants only, so the cost follows what is
        due, not history. Index rows left behind by crashes or extensions are dropped as they are met.
        """
        bound = f"{_iso(before)}|~"
        rows = self._query(
            "expiry",
            "PartitionKey le @bucket and RowKey lt @bound",
            {"bucket": _bucket(before), "bound": bound},
            page=min(max(limit, 1), 1000),
        )
        result: list[Grant] = []
        for row in rows:
            if len(result) >= limit:
                break
            grant = self._maybe_get(str(row["grant_id"]))
            row_expiry = str(row["RowKey"]).split("|", 1)[0]
            if grant is None or not grant.status.is_open or _iso(grant.expires_at) != row_expiry:
                if grant is not None or _abandoned(row):
                    self._delete_row("expiry", str(row["PartitionKey"]), str(row["RowKey"]))
                continue
            result.append(grant)
        return result

    # ------------------------------------------------------------------ audit

    def record(self, event: AuditEvent) -> None:
        """Append one event to the audit trail (never updated, never deleted)."""
        pk = escape_key(event.grant_id) if event.grant_id else f"~{event.at.astimezone(UTC):%Y%m%d}"
        entity: dict[str, Any] = {
            "PartitionKey": pk,
            "RowKey": f"{_iso(event.at)}|{uuid.uuid4().hex}",
            **{k: v for k, v in asdict(event).items() if v is not None and k != "at"},
            "at": _iso(event.at),
        }
        with _upstream("writing the audit trail"):
            self._t("audit").create_entity(entity)

    def audit_events(self, grant_id: str | None = None, limit: int = 1000) -> list[AuditEvent]:
        """Audit events in time order: one grant's (an index read), or the latest `limit` of all."""
        if grant_id is not None:
            rows = self._query("audit", "PartitionKey eq @pk", {"pk": escape_key(grant_id)})
        else:
            rows = self._list("audit")
        events = sorted((_event_from(row) for row in rows), key=lambda e: e.at)
        return events[-limit:] if grant_id is None else events[:limit]

    # ------------------------------------------------------------------ NSGs touched

    def note_nsgs(self, nsg_ids: Iterable[str]) -> None:
        """Remember NSGs the broker is about to write to, so the orphan sweep visits them after a crash."""
        for nsg_id in nsg_ids:
            key = nsg_id.lower()
            with self._lock:
                if key in self._known_nsgs:
                    continue
            with _upstream("remembering an NSG"):
                self._t("nsgs").upsert_entity(
                    {"PartitionKey": _NSG_PK, "RowKey": escape_key(key), "nsg_id": nsg_id}
                )
            with self._lock:
                self._known_nsgs.add(key)

    def nsgs_touched(self) -> set[str]:
        """Every NSG the broker has written to (or was about to), for the orphan-rule sweep."""
        rows = self._query("nsgs", "PartitionKey eq @pk", {"pk": _NSG_PK})
        return {str(row["nsg_id"]) for row in rows}

    # ------------------------------------------------------------------ leases

    @contextlib.contextmanager
    def lease(self, name: str, *, ttl_s: float = 30.0, wait_s: float = 60.0) -> Iterator[None]:
        """Hold the lease `name` across broker processes while the block runs (wait up to `wait_s`).

        The broker's rule writes on one key take turns under it, so each write is planned from a store
        read made after the previous write on that key finished. A holder that dies leaves the lease to
        lapse after `ttl_s` of wall-clock time (never the injected clock: leases are about real time).
        """
        held = self._acquire(escape_key(name), ttl_s, wait_s)
        try:
            yield
        finally:
            self._release(held)

    def _acquire(self, pk: str, ttl_s: float, wait_s: float) -> _Lease:
        table = self._t("leases")
        deadline = time.monotonic() + wait_s
        holder = uuid.uuid4().hex
        while True:
            entity = {"PartitionKey": pk, "RowKey": _LEASE_RK, "holder": holder, "until": time.time() + ttl_s}
            with _upstream("taking a lease"):
                try:
                    meta = table.create_entity(entity)
                    return _Lease(pk, str(meta.get("etag")))
                except ResourceExistsError:
                    pass
                try:
                    current = table.get_entity(pk, _LEASE_RK)
                except ResourceNotFoundError:
                    continue  # released meanwhile: try again at once
                if float(current.get("until") or 0) <= time.time():  # lapsed: its holder died
                    try:
                        meta = table.update_entity(
                            entity,
                            mode=UpdateMode.REPLACE,
                            etag=current.metadata["etag"],
                            match_condition=MatchConditions.IfNotModified,
                        )
                        return _Lease(pk, str(meta.get("etag")))
                    except (ResourceModifiedError, ResourceNotFoundError):
                        continue
            if time.monotonic() > deadline:
                raise UpstreamError(f"another broker kept the rule busy for {wait_s:g}s; try again")
            time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 - jitter, not security

    def _release(self, held: _Lease) -> None:
        try:
            self._t("leases").delete_entity(
                held.pk, _LEASE_RK, etag=held.etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            pass  # it lapsed and someone else holds it now: theirs to release
        except AzureError:
            pass  # it lapses on its own after its ttl

    # ------------------------------------------------------------------ internals

    def _t(self, kind: str) -> TableClient:
        return self._tables[kind]

    def _index(self, grant: Grant, *, principal: bool = True) -> None:
        gid = escape_key(grant.id)
        with _upstream("indexing the grant"):
            if principal:
                self._t("principals").upsert_entity(
                    {"PartitionKey": escape_key(grant.principal), "RowKey": gid, "grant_id": grant.id}
                )
            if grant.status.is_open:
                self._t("expiry").upsert_entity(_expiry_row(grant))
                self._t("open").upsert_entity(
                    {
                        "PartitionKey": _vm_port_key(grant.vm_id, grant.port),
                        "RowKey": gid,
                        "grant_id": grant.id,
                    }
                )

    def _unindex(self, grant: Grant) -> None:
        row = _expiry_row(grant)
        self._delete_row("expiry", row["PartitionKey"], row["RowKey"])
        self._delete_row("open", _vm_port_key(grant.vm_id, grant.port), escape_key(grant.id))

    def _delete_row(self, kind: str, pk: str, rk: str) -> None:
        with _upstream("cleaning an index"):
            self._t(kind).delete_entity(pk, rk)  # a missing row is fine: someone cleaned it already

    def _maybe_get(self, grant_id: str) -> Grant | None:
        try:
            return self.get(grant_id)
        except NotFound:
            return None

    def _load(self, ids: Iterable[str]) -> list[Grant]:
        return [g for g in (self._maybe_get(i) for i in ids) if g is not None]

    def _query(
        self, kind: str, query: str, parameters: dict[str, Any], *, page: int | None = None
    ) -> list[Any]:
        with _upstream("querying the store"):
            return list(self._t(kind).query_entities(query, parameters=parameters, results_per_page=page))

    def _list(self, kind: str) -> list[Any]:
        with _upstream("listing the store"):
            return list(self._t(kind).list_entities())


@contextlib.contextmanager
def _upstream(doing: str) -> Iterator[None]:
    """Turn storage failures into `UpstreamError`, letting the ones callers handle pass through."""
    try:
        yield
    except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError, JitError):
        raise
    except AzureError as err:
        raise UpstreamError(f"table storage failed while {doing}: {type(err).__name__}") from err


_LEASE_RK = "lease"
_ABANDONED = timedelta(minutes=10)


def _abandoned(row: Any) -> bool:
    """An index row whose grant record does not exist (yet): `create` writes the row first, so a row
    younger than a few minutes may belong to a grant being recorded right now and must stay."""
    written = getattr(row, "metadata", {}).get("timestamp")
    return isinstance(written, datetime) and datetime.now(UTC) - written > _ABANDONED


@dataclass(frozen=True)
class _Lease:
    pk: str
    etag: str


def _vm_port_key(vm_id: str, port: int) -> str:
    return escape_key(f"{vm_id.lower()}|{port}")


def _expiry_row(grant: Grant) -> dict[str, Any]:
    return {
        "PartitionKey": _bucket(grant.expires_at),
        "RowKey": f"{_iso(grant.expires_at)}|{escape_key(grant.id)}",
        "grant_id": grant.id,
    }


def _grant_entity(grant: Grant) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": escape_key(grant.id),
        "RowKey": _GRANT_RK,
        "id": grant.id,
        "principal": grant.principal,
        "principal_name": grant.principal_name,
        "vm_id": grant.vm_id,
        "vm_key": grant.vm_id.lower(),
        "vm_name": grant.vm_name,
        "port": grant.port,
        "protocol": grant.protocol,
        "source": grant.source,
        "status": str(grant.status),
        "created_at": _iso(grant.created_at),
        "expires_at": _iso(grant.expires_at),
        "updated_at": _iso(grant.updated_at),
        "nsg_rules": json.dumps([asdict(r) for r in grant.nsg_rules]),
        "warnings": json.dumps(list(grant.warnings)),
    }
    if grant.connect is not None:
        entity["connect"] = json.dumps(asdict(grant.connect))
    if grant.justification is not None:
        entity["justification"] = grant.justification
    if grant.reason is not None:
        entity["reason"] = grant.reason
    return entity


def _grant_from(entity: Any) -> Grant:
    connect = entity.get("connect")
    return Grant(
        id=str(entity["id"]),
        principal=str(entity["principal"]),
        principal_name=str(entity["principal_name"]),
        vm_id=str(entity["vm_id"]),
        vm_name=str(entity["vm_name"]),
        port=int(entity["port"]),
        protocol=str(entity["protocol"]),
        source=str(entity["source"]),
        status=GrantStatus(str(entity["status"])),
        created_at=_parse(str(entity["created_at"])),
        expires_at=_parse(str(entity["expires_at"])),
        updated_at=_parse(str(entity["updated_at"])),
        justification=entity.get("justification"),
        nsg_rules=tuple(NsgRuleRef(**r) for r in json.loads(entity.get("nsg_rules") or "[]")),
        connect=ConnectInfo(**json.loads(connect)) if connect else None,
        warnings=tuple(json.loads(entity.get("warnings") or "[]")),
        reason=entity.get("reason"),
        etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
    )


def _event_from(entity: Any) -> AuditEvent:
    port = entity.get("port")
    return AuditEvent(
        kind=str(entity["kind"]),
        at=_parse(str(entity["at"])),
        grant_id=entity.get("grant_id"),
        principal=entity.get("principal"),
        source=entity.get("source"),
        vm_id=entity.get("vm_id"),
        port=int(port) if port is not None else None,
        reason=entity.get("reason"),
        detail=entity.get("detail"),
    )


def _matches(grant: Grant, status: GrantStatus | None, vm: str | None) -> bool:
    if status is not None and grant.status != status:
        return False
    return vm is None or vm.lower() in (grant.vm_name.lower(), grant.vm_id.lower())


def _newest_first(grants: Iterable[Grant]) -> list[Grant]:
    return sorted(grants, key=lambda g: (g.created_at, g.id), reverse=True)
