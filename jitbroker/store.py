"""Grants, their indexes and the audit trail in Table Storage (`azure-data-tables`; Azurite in the lab).

Tables (all named `{prefix}...`):

    grants      PK = grant id                       the record; its ETag guards every state change
    expiry      PK = hour bucket, RK = expiry|id    open grants by expiry: "due before T" is a range read
    principals  PK = principal oid, RK = id         a person's grants
    open        PK = NSG id, RK = id                open grants behind one NSG, with what its rule needs
                PK = "~all", RK = id                every open grant (admins' listing)
    pending     PK = "pending", RK = id             grants not yet active (the sweeper's stale-pending pass)
    audit       PK = day, RK = newest-first time|uuid  append-only, one row per event: time-range queries
    nsgs        PK = "nsg", RK = NSG id             every NSG the broker may have written to (orphan sweep)

Every read is proportional to what it is about — one NSG's open grants, what is due, what is pending —
never to history, and every query follows its continuation tokens. Ordering keeps the open index honest:
a grant's record is written before its `open` rows (so no row exists for a grant that was never recorded),
and a close deletes the rows before and after the record changes (so a row that raced a close is gone
when the close returns). `pending` rows are written before the record, so a crash leaves the sweeper a
trail. Rows of one step that do not depend on each other (a grant's index rows, a close's deletions) go at
once (`jitbroker.overlap`). Keys are escaped; every filter is parameterized. Storage failures become
`UpstreamError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from jitbroker.errors import Conflict, InvalidRequest, JitError, NotFound, UpstreamError
from jitbroker.model import AuditEvent, AuditQuery, ConnectInfo, Grant, GrantStatus, NsgRuleRef, Opening
from jitbroker.overlap import together

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
            for kind in ("grants", "expiry", "principals", "open", "pending", "audit", "nsgs")
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

    def create(self, grant: Grant, *, alongside: Callable[[], object] | None = None) -> Grant:
        """Insert a new grant (its pending, principal and expiry rows first); `Conflict` if the id exists.

        `alongside`: another write that must land before the record too (the event that reports it), sent
        with the index rows. The `open` rows that let the reconciler see it come after, with `open_rows`."""
        self._index(grant, *([alongside] if alongside is not None else []))
        try:
            with _upstream("recording the grant"):
                meta = self._t("grants").create_entity(_grant_entity(grant))
        except ResourceExistsError as err:
            raise Conflict(f"grant {grant.id} already exists") from err
        self.note_nsgs(grant.nsg_ids)
        return replace(grant, etag=meta.get("etag"))

    def get(self, grant_id: str) -> Grant:
        """The grant with this id, carrying its current etag; `NotFound` when there is none."""
        try:
            with _upstream("reading the grant"):
                entity = self._t("grants").get_entity(escape_key(grant_id), _GRANT_RK)
        except ResourceNotFoundError as err:
            raise NotFound(f"no grant {grant_id}") from err
        return _grant_from(entity)

    def replace(self, grant: Grant, *, before: Grant | None = None, drop_rows: bool = True) -> Grant:
        """Store a new state of a grant read earlier; `Conflict` if it changed since (its etag is stale).

        An open grant's expiry row is written first; a closed grant leaves every index after the record.
        `before` (the state it was read in) lets the store skip index writes the change does not need."""
        if grant.etag is None:
            raise ValueError("replace needs the etag of the grant it was read as")
        expiry_moved = before is None or before.expires_at != grant.expires_at or not before.status.is_live
        if grant.status.is_live:
            ahead: list[Callable[[], Any]] = []
            if expiry_moved:
                ahead.append(partial(self._t("expiry").upsert_entity, _expiry_row(grant)))
            if grant.status is GrantStatus.PENDING and grant.decided_at is not None:
                # an approved grant: the sweeper's pending clock starts at the approval
                row = {"PartitionKey": _PENDING_PK, "RowKey": escape_key(grant.id), "grant_id": grant.id}
                row = {**row, **_times(grant), "created_at": _iso(grant.decided_at)}
                ahead.append(partial(self._t("pending").upsert_entity, row))
            with _upstream("indexing the grant"):
                together(*ahead)
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
        was = before.status if before is not None else None
        after: list[Callable[[], Any]] = []
        if drop_rows and not grant.status.is_open and (was is None or was.is_open):
            after.append(partial(self.drop_open_rows, grant))
        if not grant.status.is_live:
            row = _expiry_row(grant)
            after.append(partial(self._delete_row, "expiry", row["PartitionKey"], row["RowKey"]))
        if grant.status is not GrantStatus.PENDING and was in (None, GrantStatus.PENDING):
            after.append(partial(self._delete_row, "pending", _PENDING_PK, escape_key(grant.id)))
        if grant.status is not GrantStatus.AWAITING_APPROVAL and was in (None, GrantStatus.AWAITING_APPROVAL):
            after.append(partial(self._delete_row, "pending", _AWAITING_PK, escape_key(grant.id)))
        together(*after)
        return replace(grant, etag=meta.get("etag"))

    # ------------------------------------------------------------------ the open index

    def open_rows(self, grant: Grant) -> None:
        """Make an open grant visible to the reconcilers of its NSGs (after its record exists). The rows say
        when: of two VMs behind one NSG sharing an address, the one whose grant opened first keeps it."""
        opened = {"opened_at": _iso(self._clock())}
        rows = [{**_open_row(grant, nsg_id), **opened} for nsg_id in (*grant.nsg_ids, None)]
        with _upstream("indexing the grant"):
            together(*(partial(self._t("open").upsert_entity, row) for row in rows))

    def extend_open_rows(self, grant: Grant) -> None:
        """Carry a new expiry into the grant's existing `open` rows; rows a close removed stay removed."""
        rows = [
            {"PartitionKey": _open_pk(nsg_id), "RowKey": escape_key(grant.id), **_times(grant)}
            for nsg_id in (*grant.nsg_ids, None)
        ]
        together(*(partial(self._merge_open_row, row) for row in rows))

    def drop_open_rows_many(self, grants: Iterable[Grant]) -> None:
        """`drop_open_rows` for many grants (a sweep's): one transaction per partition and hundred rows, each
        falling back to single deletes when a row of it is already gone (a transaction is all or nothing)."""
        by_partition: dict[str, list[str]] = {}
        for grant in grants:
            for nsg_id in (*grant.nsg_ids, None):
                by_partition.setdefault(_open_pk(nsg_id), []).append(escape_key(grant.id))
        for pk, keys in by_partition.items():
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), 100):
                chunk = unique[start : start + 100]
                try:
                    self._t("open").submit_transaction(
                        [("delete", {"PartitionKey": pk, "RowKey": rk}) for rk in chunk]
                    )
                except AzureError:
                    for rk in chunk:
                        self._delete_row("open", pk, rk)

    def drop_open_rows(self, grant: Grant) -> None:
        """Take the grant out of its NSGs' desired state (a close does this before and after its record)."""
        together(
            *(
                partial(self._delete_row, "open", _open_pk(nsg_id), escape_key(grant.id))
                for nsg_id in (*grant.nsg_ids, None)
            )
        )

    def openings(self, nsg_id: str, *, private_ip: str | None = None) -> list[Opening]:
        """The open grants behind one NSG, as its reconciler needs them (one paged partition read), or only
        those for one VM address."""
        query, params = "PartitionKey eq @pk", {"pk": _open_pk(nsg_id)}
        if private_ip is not None:
            query, params = f"{query} and private_ip eq @ip", {**params, "ip": private_ip}
        rows = self._query("open", query, params, page=1000)
        return [_opening_from(row) for row in rows]

    def open_for_principal(self, oid: str) -> list[Opening]:
        """One person's open grants (the per-person limits): one filtered read of the open index, whatever
        their history."""
        rows = self._query(
            "open", "PartitionKey eq @pk and principal eq @principal", {"pk": _ALL_OPEN, "principal": oid}
        )
        return [_opening_from(row) for row in rows]

    def open_grants(self) -> list[Grant]:
        """Every open grant (admins), read through the open index: proportional to what is open."""
        rows = self._query("open", "PartitionKey eq @pk", {"pk": _open_pk(None)}, page=1000)
        return [g for g in self._load(str(row["grant_id"]) for row in rows) if g.status.is_open]

    # ------------------------------------------------------------------ listings

    def list_for_principal(
        self, oid: str, status: GrantStatus | None = None, vm: str | None = None
    ) -> list[Grant]:
        """A person's grants, newest first, optionally only one status and one VM (name or resource id)."""
        rows = self._query("principals", "PartitionKey eq @pk", {"pk": escape_key(oid)})
        grants = self._load(str(row["grant_id"]) for row in rows)
        return _newest_first(g for g in grants if _matches(g, status, vm))

    def list_all(self, status: GrantStatus | None = None, vm: str | None = None) -> list[Grant]:
        """Every grant (admins), newest first, optionally one status and one VM (name or resource id).

        Open statuses come from the open index; closed ones are history, read page by page to the end."""
        if status is GrantStatus.AWAITING_APPROVAL:
            grants = self.awaiting()
        elif status is not None and status.is_open:
            grants = self.open_grants()
        else:
            grants = [_grant_from(row) for row in self._list("grants")]
        return _newest_first(g for g in grants if _matches(g, status, vm))

    def pending(self) -> list[PendingRow]:
        """Grants recorded but not (yet) active, oldest first, with their record when it exists."""
        rows = self._query("pending", "PartitionKey eq @pk", {"pk": _PENDING_PK}, page=1000)
        found = [
            PendingRow(
                str(row["grant_id"]), _parse(str(row["created_at"])), self._maybe_get(str(row["grant_id"]))
            )
            for row in rows
        ]
        return sorted(found, key=lambda p: (p.created_at, p.grant_id))

    def awaiting(self) -> list[Grant]:
        """Grants waiting for an approver, oldest first (one partition: proportional to what waits)."""
        rows = self._query("pending", "PartitionKey eq @pk", {"pk": _AWAITING_PK}, page=1000)
        grants = self._load(str(row["grant_id"]) for row in rows)
        waiting = [g for g in grants if g.status is GrantStatus.AWAITING_APPROVAL]
        return sorted(waiting, key=lambda g: (g.created_at, g.id))

    def forget_pending(self, grant_id: str) -> None:
        """Drop a pending row whose grant was never recorded (a broker died before the record)."""
        self._delete_row("pending", _PENDING_PK, escape_key(grant_id))

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
        records = self._load_many(str(row["grant_id"]) for row in rows[: limit * 2])
        for row in rows:
            if len(result) >= limit:
                break
            gid = str(row["grant_id"])
            grant = records[gid] if gid in records else self._maybe_get(gid)
            row_expiry = str(row["RowKey"]).split("|", 1)[0]
            if grant is None or not grant.status.is_live or _iso(grant.expires_at) != row_expiry:
                if grant is not None or _abandoned(row):
                    self._delete_row("expiry", str(row["PartitionKey"]), str(row["RowKey"]))
                continue
            result.append(grant)
        return result

    # ------------------------------------------------------------------ audit

    def record(self, event: AuditEvent) -> None:
        """Append one event to the audit trail (never updated, never deleted): one row in its day's partition,
        with lower-cased copies of the fields the audit API filters on. An event with a `once` identity has a
        row key made from it, so writing it again (a broker finishing what a dead one began) adds nothing."""
        row_key = _newest_first_key(event.at)
        if event.once is not None:
            row_key = f"{row_key[:20]}|{hashlib.sha256(event.once.encode()).hexdigest()[:32]}"
        entity: dict[str, Any] = {
            "PartitionKey": f"{event.at.astimezone(UTC):%Y%m%d}",
            "RowKey": row_key,
            **{k: v for k, v in asdict(event).items() if v is not None and k not in ("at", "once")},
            "at": _iso(event.at),
            "principal_key": (event.principal or "").lower(),
            "actor_key": (event.actor or "").lower(),
            "vm_key": (event.vm_id or "").lower(),
            "vm_name_key": (event.vm_id or "").rstrip("/").rsplit("/", 1)[-1].lower(),
        }
        with _upstream("writing the audit trail"):
            if event.once is None:
                self._t("audit").create_entity(entity)
            else:
                self._t("audit").upsert_entity(entity, mode=UpdateMode.REPLACE)

    def audit_page(
        self, query: AuditQuery, *, cursor: str | None = None
    ) -> tuple[list[AuditEvent], str | None]:
        """Events in `query`'s time range, newest first, at most `query.limit`, and the next page's cursor
        (None when there is none). Reads one day's partition at a time, only the days the range covers."""
        day, after = _parse_cursor(cursor) if cursor else (query.until.astimezone(UTC), None)
        first_day = query.since.astimezone(UTC).date()  # rows are filed by their UTC day
        events: list[AuditEvent] = []
        lo = _newest_first_key(query.until)[:20]
        hi = _newest_first_key(query.since)[:20] + "~"
        while day.date() >= first_day and len(events) < query.limit:
            pk = f"{day:%Y%m%d}"
            clauses, params = (
                ["PartitionKey eq @pk", "RowKey ge @lo", "RowKey lt @hi"],
                {"pk": pk, "lo": lo, "hi": hi},
            )
            if after is not None:
                clauses.append("RowKey gt @after")
                params["after"] = after
            for name, value in (
                ("kind", query.kind),
                (_vm_field(query.vm), (query.vm or "").rstrip("/").lower() or None),
            ):
                if value is not None:
                    clauses.append(f"{name} eq @{name}")
                    params[name] = value
            if query.principal:  # events of their grants, and what they did to other people's
                # (spaces around the parameters: azure-data-tables finds them by splitting on spaces)
                clauses.append("( principal_key eq @who or actor_key eq @who )")
                params["who"] = query.principal.lower()
            with _upstream("reading the audit trail"):
                pages = self._t("audit").query_entities(
                    " and ".join(clauses), parameters=params, results_per_page=query.limit - len(events)
                )
                for row in pages:
                    events.append(_event_from(row))
                    if len(events) >= query.limit:
                        return events, _cursor(day, str(row["RowKey"]))
            day, after = day - timedelta(days=1), None
        return events, None

    def audit_events(self, grant_id: str | None = None, limit: int = 1000) -> list[AuditEvent]:
        """Audit events in time order: one grant's, or the latest `limit` of all. A scan of the whole trail,
        for checks and an operator's ad-hoc reads; the API reads time ranges (`audit_page`)."""
        if grant_id is not None:
            rows = self._query("audit", "grant_id eq @grant", {"grant": grant_id})
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

    def ping(self) -> None:
        """One cheap read of one table (readiness): raises when the store cannot be reached."""
        with _upstream("checking the store"):
            pages = (
                self._t("nsgs")
                .query_entities("PartitionKey eq @pk", parameters={"pk": _NSG_PK}, results_per_page=1)
                .by_page()
            )
            next(iter(pages), None)

    # ------------------------------------------------------------------ internals

    def _t(self, kind: str) -> TableClient:
        return self._tables[kind]

    def _index(self, grant: Grant, *also: Callable[[], object]) -> None:
        gid = escape_key(grant.id)
        rows: list[tuple[str, dict[str, Any]]] = []
        waiting_pk = {GrantStatus.PENDING: _PENDING_PK, GrantStatus.AWAITING_APPROVAL: _AWAITING_PK}
        if grant.status in waiting_pk:
            pk = waiting_pk[grant.status]
            rows.append(
                ("pending", {"PartitionKey": pk, "RowKey": gid, "grant_id": grant.id, **_times(grant)})
            )
        rows.append(
            ("principals", {"PartitionKey": escape_key(grant.principal), "RowKey": gid, "grant_id": grant.id})
        )
        if grant.status.is_live:
            rows.append(("expiry", _expiry_row(grant)))
        with _upstream("indexing the grant"):
            together(*(partial(self._t(kind).upsert_entity, row) for kind, row in rows), *also)

    def _merge_open_row(self, row: dict[str, Any]) -> None:
        """Merge into an existing `open` row (If-Match: *); a row a close removed stays removed."""
        try:
            with _upstream("indexing the grant"):
                self._t("open").update_entity(row, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            pass

    def _delete_row(self, kind: str, pk: str, rk: str) -> None:
        with _upstream("cleaning an index"):
            self._t(kind).delete_entity(pk, rk)  # a missing row is fine: someone cleaned it already

    def _maybe_get(self, grant_id: str) -> Grant | None:
        try:
            return self.get(grant_id)
        except NotFound:
            return None

    def _load_many(self, ids: Iterable[str]) -> dict[str, Grant | None]:
        """Point reads of several records at once (a sweep's due grants): round trips overlap."""
        wanted = list(dict.fromkeys(ids))
        if len(wanted) < 2:
            return {gid: self._maybe_get(gid) for gid in wanted}
        with ThreadPoolExecutor(max_workers=min(8, len(wanted)), thread_name_prefix="store") as pool:
            return dict(zip(wanted, pool.map(self._maybe_get, wanted), strict=True))

    def _load(self, ids: Iterable[str]) -> list[Grant]:
        return [g for g in (self._maybe_get(i) for i in ids) if g is not None]

    def _query(
        self, kind: str, query: str, parameters: dict[str, Any], *, page: int | None = None
    ) -> list[Any]:
        # list() follows every continuation token: no query here stops silently at a page.
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


_PENDING_PK = "pending"
_AWAITING_PK = "awaiting"
_ALL_OPEN = "~all"
_ABANDONED = timedelta(minutes=10)


def _abandoned(row: Any) -> bool:
    """An index row whose grant record does not exist (yet): `create` writes the row first, so a row
    younger than a few minutes may belong to a grant being recorded right now and must stay."""
    written = getattr(row, "metadata", {}).get("timestamp")
    return isinstance(written, datetime) and datetime.now(UTC) - written > _ABANDONED


_MAX_MICROS = 10**19


def _newest_first_key(moment: datetime) -> str:
    micros = int(moment.astimezone(UTC).timestamp() * 1_000_000)
    return f"{_MAX_MICROS - micros:020d}|{uuid.uuid4().hex}"


def _vm_field(vm: str | None) -> str:
    return "vm_key" if vm and vm.startswith("/") else "vm_name_key"


def _cursor(day: datetime, row_key: str) -> str:
    import base64

    return base64.urlsafe_b64encode(f"{day:%Y%m%d}|{row_key}".encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor this store handed out; `InvalidRequest` for anything else (it comes from a URL)."""
    import base64

    try:
        if len(cursor) > 600:
            raise ValueError("too long")
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        day, row_key = text.split("|", 1)
        moment = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC, hour=23, minute=59, second=59)
        if not row_key[:20].isdigit():
            raise ValueError(row_key)
    except ValueError as err:
        raise InvalidRequest("cursor is not one this broker handed out; start again without it") from err
    return moment, row_key


@dataclass(frozen=True)
class PendingRow:
    """A grant that was not active when last seen: its id, when it was asked for, and its record if any."""

    grant_id: str
    created_at: datetime
    grant: Grant | None


def _open_pk(nsg_id: str | None) -> str:
    return _ALL_OPEN if nsg_id is None else escape_key(nsg_id.lower())


def _times(grant: Grant) -> dict[str, Any]:
    return {"expires_at": _iso(grant.expires_at), "created_at": _iso(grant.created_at)}


def _open_row(grant: Grant, nsg_id: str | None) -> dict[str, Any]:
    return {
        "PartitionKey": _open_pk(nsg_id),
        "RowKey": escape_key(grant.id),
        "grant_id": grant.id,
        "principal": grant.principal,
        "vm_id": grant.vm_id,
        "vm_key": grant.vm_id.lower(),
        "vm_name": grant.vm_name,
        "private_ip": grant.private_ip or "",
        "port": grant.port,
        "source": grant.source,
        **_times(grant),
    }


def _opening_from(row: Any) -> Opening:
    return Opening(
        grant_id=str(row["grant_id"]),
        principal=str(row["principal"]),
        vm_id=str(row["vm_id"]),
        vm_name=str(row["vm_name"]),
        private_ip=str(row["private_ip"]),
        port=int(row["port"]),
        source=str(row["source"]),
        expires_at=_parse(str(row["expires_at"])),
        created_at=_parse(str(row["created_at"])),
        opened_at=_parse(str(row["opened_at"])) if row.get("opened_at") else None,
    )


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
        "nsg_ids": json.dumps(list(grant.nsg_ids)),
    }
    if grant.connect is not None:
        entity["connect"] = json.dumps(asdict(grant.connect))
    if grant.justification is not None:
        entity["justification"] = grant.justification
    if grant.reason is not None:
        entity["reason"] = grant.reason
    if grant.approval_required:
        entity["approval"] = json.dumps(
            {
                "approver_role": grant.approver_role,
                "requested_seconds": grant.requested_seconds,
                "decided_by": grant.decided_by,
                "decided_by_name": grant.decided_by_name,
                "decided_at": _iso(grant.decided_at) if grant.decided_at else None,
                "decision_reason": grant.decision_reason,
            }
        )
    return entity


def _grant_from(entity: Any) -> Grant:
    connect = entity.get("connect")
    rules = tuple(NsgRuleRef(**r) for r in json.loads(entity.get("nsg_rules") or "[]"))
    nsg_ids = tuple(json.loads(entity.get("nsg_ids") or "[]")) or tuple(
        dict.fromkeys(r.nsg_id for r in rules)
    )
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
        nsg_rules=rules,
        nsg_ids=nsg_ids,
        connect=ConnectInfo(**json.loads(connect)) if connect else None,
        warnings=tuple(json.loads(entity.get("warnings") or "[]")),
        reason=entity.get("reason"),
        **_approval_from(entity.get("approval")),
        etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
    )


def _approval_from(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    approval = json.loads(raw)
    decided_at = approval.get("decided_at")
    return {
        "approval_required": True,
        "approver_role": approval.get("approver_role"),
        "requested_seconds": approval.get("requested_seconds"),
        "decided_by": approval.get("decided_by"),
        "decided_by_name": approval.get("decided_by_name"),
        "decided_at": _parse(decided_at) if decided_at else None,
        "decision_reason": approval.get("decision_reason"),
    }


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
        actor=entity.get("actor"),
    )


def _matches(grant: Grant, status: GrantStatus | None, vm: str | None) -> bool:
    if status is not None and grant.status != status:
        return False
    return vm is None or vm.lower() in (grant.vm_name.lower(), grant.vm_id.lower())


def _newest_first(grants: Iterable[Grant]) -> list[Grant]:
    return sorted(grants, key=lambda g: (g.created_at, g.id), reverse=True)
