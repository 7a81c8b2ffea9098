"""The grant store against real Azurite: records, ETags, the expiry index, indexes, audit, escaping."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from jitbroker.errors import Conflict, NotFound, UpstreamError
from jitbroker.model import AuditEvent, ConnectInfo, Grant, GrantStatus, NsgRuleRef
from jitbroker.store import GrantStore, escape_key

T0 = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
VM = "/subscriptions/s1/resourceGroups/rg-demo/providers/Microsoft.Compute/virtualMachines/web-01"
NSG = "/subscriptions/s1/resourceGroups/rg-demo/providers/Microsoft.Network/networkSecurityGroups/nsg-web"
NSG2 = NSG.replace("nsg-web", "nsg-other")


@pytest.fixture
def service(adapter_table_connection_string: str) -> Iterator[TableServiceClient]:
    client = TableServiceClient.from_connection_string(adapter_table_connection_string)
    yield client
    client.close()


@pytest.fixture
def store(service: TableServiceClient, table_prefix: str) -> GrantStore:
    s = GrantStore(service, prefix=table_prefix, clock=lambda: T0)
    s.ensure_tables()
    return s


def grant(gid: str = "g-1", **changes: object) -> Grant:
    base = Grant(
        id=gid,
        principal="a11ce000-0000-4000-8000-000000000001",
        principal_name="alice@contoso.test",
        vm_id=VM,
        vm_name="web-01",
        port=22,
        protocol="ssh",
        source="203.0.113.10/32",
        status=GrantStatus.PENDING,
        created_at=T0,
        expires_at=T0 + timedelta(hours=1),
        updated_at=T0,
        connect=ConnectInfo("web-01.example.test", None, None, "192.0.2.4", "azureuser", "Linux"),
        nsg_ids=(NSG,),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_created_grant_reads_back_field_for_field_with_an_etag(store: GrantStore):
    full = grant(
        justification="fix prod",
        nsg_rules=(NsgRuleRef(NSG, "jit-192.0.2.4-p22-x20300501T130000Z", 100),),
        connect=ConnectInfo("198.51.100.10", "198.51.100.10", None, "192.0.2.4", "azureuser", "Linux"),
        warnings=("rule 'AllowSSH' already allows port 22",),
        expires_at=T0 + timedelta(minutes=30, microseconds=123456),
    )
    created = store.create(full)
    assert created.etag
    read = store.get("g-1")
    assert read == full
    assert read.etag == created.etag


def test_creating_the_same_id_twice_is_a_conflict(store: GrantStore):
    store.create(grant())
    with pytest.raises(Conflict):
        store.create(grant())


def test_an_unknown_grant_is_not_found(store: GrantStore):
    with pytest.raises(NotFound):
        store.get("g-nope")


def test_replace_with_a_stale_etag_is_a_conflict_and_changes_nothing(store: GrantStore):
    first = store.create(grant())
    active = store.replace(replace(first, status=GrantStatus.ACTIVE))
    assert active.etag != first.etag
    with pytest.raises(Conflict):
        store.replace(replace(first, status=GrantStatus.REVOKED))
    assert store.get("g-1").status is GrantStatus.ACTIVE


def test_replace_needs_the_etag_it_was_read_with(store: GrantStore):
    store.create(grant())
    with pytest.raises(ValueError, match="etag"):
        store.replace(grant(status=GrantStatus.ACTIVE))


def test_due_is_a_range_read_in_expiry_order_that_skips_closed_and_future_grants(store: GrantStore):
    soon = store.create(grant("g-soon", expires_at=T0 + timedelta(minutes=5)))
    store.create(grant("g-later", expires_at=T0 + timedelta(hours=3)))
    store.create(grant("g-yesterday", expires_at=T0 - timedelta(days=1), status=GrantStatus.ACTIVE))
    closed = store.create(grant("g-closed", expires_at=T0 + timedelta(minutes=1)))
    store.replace(replace(closed, status=GrantStatus.REVOKED))

    due = store.due(T0 + timedelta(minutes=10), limit=10)
    assert [g.id for g in due] == ["g-yesterday", "g-soon"]
    assert store.due(T0 + timedelta(minutes=10), limit=1)[0].id == "g-yesterday"
    assert store.due(T0 + timedelta(minutes=5), limit=10)[-1].id == "g-soon"  # due at exactly its expiry
    assert store.due(T0 - timedelta(days=2), limit=10) == []
    store.replace(replace(soon, status=GrantStatus.EXPIRED))
    assert [g.id for g in store.due(T0 + timedelta(hours=5), limit=10)] == ["g-yesterday", "g-later"]


def test_an_extended_grant_is_due_at_its_new_expiry_only(store: GrantStore):
    g = store.create(grant(expires_at=T0 + timedelta(minutes=5)))
    store.replace(replace(g, expires_at=T0 + timedelta(hours=2)))
    assert store.due(T0 + timedelta(minutes=10), limit=10) == []
    assert [x.id for x in store.due(T0 + timedelta(hours=2), limit=10)] == ["g-1"]


def test_an_nsgs_openings_are_its_indexed_open_grants_only(store: GrantStore):
    a = store.create(grant("g-a"))
    store.open_rows(a)
    b = store.create(grant("g-b", principal="b0b", source="203.0.113.11/32"))
    store.open_rows(b)
    store.replace(replace(b, status=GrantStatus.ACTIVE))
    other = store.create(grant("g-other-nsg", nsg_ids=(NSG2,)))
    store.open_rows(other)
    gone = store.create(grant("g-gone", source="203.0.113.12/32"))
    store.open_rows(gone)
    store.replace(replace(gone, status=GrantStatus.FAILED, reason="arm said no"))
    store.create(grant("g-not-indexed-yet"))

    assert sorted(o.grant_id for o in store.openings(NSG)) == ["g-a", "g-b"]
    assert [o.grant_id for o in store.openings(NSG.upper())] != []  # resource ids ignore case
    assert [o.grant_id for o in store.openings(NSG2)] == ["g-other-nsg"]
    opening = next(o for o in store.openings(NSG) if o.grant_id == "g-b")
    assert (opening.principal, opening.port, opening.source, opening.private_ip) == (
        "b0b",
        22,
        "203.0.113.11/32",
        "192.0.2.4",
    )
    assert opening.expires_at == b.expires_at and opening.vm_id == VM


def test_extending_moves_the_expiry_of_existing_open_rows_but_never_brings_a_closed_one_back(
    store: GrantStore,
):
    g = store.create(grant())
    store.open_rows(g)
    longer = store.replace(replace(g, expires_at=T0 + timedelta(hours=3)))
    store.extend_open_rows(longer)
    assert [o.expires_at for o in store.openings(NSG)] == [T0 + timedelta(hours=3)]

    store.drop_open_rows(longer)  # a close got there first
    store.extend_open_rows(replace(longer, expires_at=T0 + timedelta(hours=4)))
    assert store.openings(NSG) == []


def test_open_grants_for_admins_come_from_the_open_index(store: GrantStore):
    a = store.create(grant("g-a"))
    store.open_rows(a)
    closed = store.create(grant("g-closed"))
    store.open_rows(closed)
    store.replace(replace(closed, status=GrantStatus.REVOKED))
    assert [g.id for g in store.open_grants()] == ["g-a"]
    assert [g.id for g in store.list_all(status=GrantStatus.PENDING)] == ["g-a"]
    assert {g.id for g in store.list_all()} == {"g-a", "g-closed"}


def test_pending_rows_list_grants_not_yet_active_with_their_record(store: GrantStore):
    a = store.create(grant("g-a", created_at=T0 - timedelta(minutes=5)))
    store.create(grant("g-b"))
    store.replace(replace(a, status=GrantStatus.ACTIVE))
    store.create(grant("g-c"))
    store.forget_pending("g-c")
    assert [(p.grant_id, p.grant is not None) for p in store.pending()] == [("g-b", True)]


def test_a_principals_grants_filter_by_status_and_vm_newest_first(store: GrantStore):
    store.create(grant("g-old", created_at=T0 - timedelta(hours=2)))
    new = store.create(grant("g-new", created_at=T0))
    store.open_rows(new)
    store.replace(replace(new, status=GrantStatus.ACTIVE))
    store.create(grant("g-other", principal="b0b"))
    store.create(grant("g-web2", vm_id=VM.replace("web-01", "web-02"), vm_name="web-02"))

    mine = store.list_for_principal(grant().principal)
    assert [g.id for g in mine] == ["g-web2", "g-new", "g-old"]  # newest first; ties by id
    assert [g.id for g in store.list_for_principal(grant().principal, status=GrantStatus.ACTIVE)] == ["g-new"]
    assert {g.id for g in store.list_for_principal(grant().principal, vm="web-02")} == {"g-web2"}
    assert {g.id for g in store.list_all(vm=VM)} == {"g-old", "g-new", "g-other"}
    assert [g.id for g in store.list_all(status=GrantStatus.ACTIVE)] == ["g-new"]


def test_audit_is_append_only_and_readable_per_grant(store: GrantStore):
    for minute, kind in enumerate(["requested", "granted", "revoked"]):
        store.record(
            AuditEvent(kind, T0 + timedelta(minutes=minute), "g-1", "alice", "203.0.113.10/32", VM, 22)
        )
    store.record(AuditEvent("denied", T0, None, "mallory", "203.0.113.66/32", VM, 22, reason="not eligible"))
    store.record(AuditEvent("requested", T0, "g-2", "bob", None, VM, None))

    assert [e.kind for e in store.audit_events("g-1")] == ["requested", "granted", "revoked"]
    assert store.audit_events("g-1")[0] == AuditEvent(
        "requested", T0, "g-1", "alice", "203.0.113.10/32", VM, 22
    )
    everything = store.audit_events()
    assert len(everything) == 5
    assert any(e.kind == "denied" and e.reason == "not eligible" and e.grant_id is None for e in everything)
    assert len(store.audit_events(limit=2)) == 2


def test_nsgs_the_broker_touched_are_remembered_from_grants_and_explicit_notes(store: GrantStore):
    other = NSG.replace("nsg-web", "nsg-subnet")
    g = store.create(grant())
    store.replace(replace(g, status=GrantStatus.ACTIVE, nsg_rules=(NsgRuleRef(NSG, "jit-x", 100),)))
    store.note_nsgs([other])
    assert store.nsgs_touched() == {NSG, other}


@pytest.mark.parametrize(
    "hostile",
    [
        "a/b",
        "a\\b",
        "a#b",
        "a?b",
        "tab\there",
        "nl\nhere",
        "del\x7fhere",
        "quote'or PartitionKey ne '",
        "%2F",
    ],
)
def test_hostile_ids_and_principals_round_trip_without_escaping_their_key(store: GrantStore, hostile: str):
    g = store.create(grant(f"g-{hostile}", principal=hostile))
    assert store.get(f"g-{hostile}") == g
    assert [x.id for x in store.list_for_principal(hostile)] == [g.id]
    assert store.list_for_principal("quote") == []
    store.record(AuditEvent("requested", T0, g.id, hostile, None, VM, 22))
    assert [e.principal for e in store.audit_events(g.id)] == [hostile]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("plain-id", "plain-id"),
        ("a/b", "a%2Fb"),
        ("100%", "100%25"),
        ("x\ty", "x%09y"),
        ("a#?\\", "a%23%3F%5C"),
    ],
)
def test_keys_are_percent_escaped(raw: str, key: str):
    assert escape_key(raw) == key


def test_very_long_keys_are_shortened_but_stay_distinct():
    a, b = escape_key("x" * 2000 + "a"), escape_key("x" * 2000 + "b")
    assert len(a) <= 400 and a != b


def test_a_filter_value_cannot_inject_a_condition(store: GrantStore):
    store.open_rows(store.create(grant()))
    assert store.list_for_principal("x' or PartitionKey ne 'x") == []
    assert store.openings("x' or PartitionKey ne 'x") == []


def test_storage_that_cannot_be_reached_is_an_upstream_error():
    dead = TableServiceClient.from_connection_string(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        retry_total=0,
    )
    with pytest.raises(UpstreamError):
        GrantStore(dead, prefix="dead", clock=lambda: T0).get("g-1")


def test_the_audit_log_pages_newest_first_through_a_time_range_with_filters(store: GrantStore):
    from jitbroker.model import AuditQuery

    base = T0 - timedelta(days=2)
    for i in range(7):  # across three days, two principals, two VMs
        store.record(
            AuditEvent(
                kind="granted" if i % 2 == 0 else "revoked",
                at=base + timedelta(hours=8 * i),
                grant_id=f"g-{i}",
                principal="alice" if i < 4 else "bob",
                source="203.0.113.10/32",
                vm_id=VM if i % 3 else VM.replace("web-01", "db-01"),
                port=22,
            )
        )
    everything = AuditQuery(since=base, until=T0 + timedelta(days=1), limit=3)
    first, cursor = store.audit_page(everything)
    assert [e.grant_id for e in first] == ["g-6", "g-5", "g-4"]
    second, cursor = store.audit_page(everything, cursor=cursor)
    third, cursor = store.audit_page(everything, cursor=cursor)
    assert [e.grant_id for e in second + third] == ["g-3", "g-2", "g-1", "g-0"]
    assert cursor is None

    window = AuditQuery(since=base + timedelta(hours=8), until=base + timedelta(hours=24), limit=10)
    assert [e.grant_id for e in store.audit_page(window)[0]] == ["g-3", "g-2", "g-1"]
    only_bob = AuditQuery(since=base, until=T0 + timedelta(days=1), principal="bob", limit=10)
    assert [e.grant_id for e in store.audit_page(only_bob)[0]] == ["g-6", "g-5", "g-4"]
    db = AuditQuery(since=base, until=T0 + timedelta(days=1), vm="db-01", kind="granted", limit=10)
    assert [e.grant_id for e in store.audit_page(db)[0]] == ["g-6", "g-0"]
    by_id = AuditQuery(since=base, until=T0 + timedelta(days=1), vm=VM.upper(), limit=10)
    assert [e.grant_id for e in store.audit_page(by_id)[0]] == ["g-5", "g-4", "g-2", "g-1"]


def test_an_audit_cursor_that_was_not_handed_out_is_a_clear_bad_request(store: GrantStore):
    from jitbroker.errors import InvalidRequest
    from jitbroker.model import AuditQuery

    query = AuditQuery(since=T0 - timedelta(days=1), until=T0)
    for bad in ("not-base64!!", "eHl6", "MjAzMDA1MDF8bm90LWEta2V5"):
        with pytest.raises(InvalidRequest, match="cursor"):
            store.audit_page(query, cursor=bad)
