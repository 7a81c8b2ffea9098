"""What one accepted write did to an NSG, so that its operation can commit or revert exactly that.

Several operations may be in flight on one NSG at once (the `accept`, `lro_failed` and `supersede` concurrency
modes), so an operation that ends Failed or Canceled must not restore a snapshot of the whole NSG taken when
it started: that would also undo every write accepted after it. A `Change` remembers, per rule, the record the
write put in place and the one it replaced. Reverting puts the old record back only where the write's own
record is still the current one, so a later write to the same rule wins and writes to other rules are never
touched. Records are compared by identity, never by value: two writes of equal rules are still two writes.

Provisioning states are not stored by writes but derived (`refresh_states`): a rule is `Deleting` while a
change in flight deletes it, `Updating` while one installed it, else `Succeeded`; the NSG is `Updating` while
any change on it is in flight. So however operations interleave, no rule is left `Updating` by an operation
that has ended.

Approximations, each on a path only overlapping writes reach: a reverted whole-NSG PUT puts back a rule it had
left out only if no later write recreated it or gave its priority and direction to another rule, and not at
all if that rule was being deleted (it was leaving); a rule's older record comes back only into a free slot;
a failed write that created the NSG removes the NSG, with whatever later writes put in it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lab.arm.state import NsgRecord, RuleRecord


@dataclass
class Change:
    """The rules and settings one write changed on one NSG."""

    nsg: NsgRecord
    created: bool = False
    installed: dict[str, RuleRecord] = field(default_factory=dict)
    replaced: dict[str, RuleRecord | None] = field(default_factory=dict)
    dropped: dict[str, RuleRecord] = field(default_factory=dict)
    deleting: dict[str, RuleRecord] = field(default_factory=dict)
    settings: tuple[tuple[bool, dict[str, str]], tuple[bool, dict[str, str]]] | None = None
    # Changes of superseded operations: never reverted, committed when this one ends (`lab.arm.concurrency`).
    carried: list[Change] = field(default_factory=list)

    # ---- applying (the write itself) -----------------------------------------------------------------------

    def put_rule(self, key: str, record: RuleRecord) -> None:
        """Install `record` under `key`, remembering what it replaces."""
        self.replaced[key] = self.nsg.rules.get(key)
        self.installed[key] = record
        self.nsg.rules[key] = record

    def delete_rule(self, key: str) -> None:
        """Mark the rule under `key` as being deleted; it goes when the operation succeeds."""
        self.deleting[key] = self.nsg.rules[key]

    def replace_rules(self, rules: dict[str, RuleRecord]) -> None:
        """Make `rules` the NSG's whole collection (records already in it are kept, not replaced)."""
        for key, record in rules.items():
            current = self.nsg.rules.get(key)
            if current is not record:
                self.replaced[key] = current
                self.installed[key] = record
        self.dropped = {k: r for k, r in self.nsg.rules.items() if k not in rules}
        self.nsg.rules = dict(rules)

    def set_settings(self, flush_connection: bool, tags: dict[str, str]) -> None:
        """Set `flushConnection` and tags, remembering the old ones."""
        before = (self.nsg.flush_connection, dict(self.nsg.tags))
        self.nsg.flush_connection, self.nsg.tags = flush_connection, dict(tags)
        self.settings = (before, (flush_connection, dict(tags)))

    # ---- ending (the operation settles) --------------------------------------------------------------------

    def commit(self) -> None:
        """The operation succeeded: rules being deleted go (unless replaced since); carried changes commit."""
        rules = self.nsg.rules
        for key, record in self.deleting.items():
            if rules.get(key) is record:
                del rules[key]
        for change in self.carried:
            change.commit()

    def revert(self) -> None:
        """The operation failed or was canceled: undo this write where nothing later overwrote it."""
        rules = self.nsg.rules
        for key, record in self.installed.items():
            if rules.get(key) is record:
                previous = self.replaced.get(key)
                if previous is None or _slot_taken(rules, key, previous):
                    del rules[key]
                else:
                    rules[key] = previous
        for key, record in self.dropped.items():
            if key in rules or self._was_being_deleted(record) or _slot_taken(rules, key, record):
                continue
            rules[key] = record
        if self.settings is not None:
            (flush, tags), after = self.settings
            if (self.nsg.flush_connection, self.nsg.tags) == after:
                self.nsg.flush_connection, self.nsg.tags = flush, dict(tags)
        for change in self.carried:
            change.commit()

    def _was_being_deleted(self, record: RuleRecord) -> bool:
        return record.state == "Deleting"

    def walk(self) -> Iterator[Change]:
        """This change and every change it carries."""
        yield self
        for change in self.carried:
            yield from change.walk()


def _slot_taken(rules: dict[str, RuleRecord], key: str, record: RuleRecord) -> bool:
    """Whether another rule now holds `record`'s priority and direction: a later write took the slot, and
    NRP never holds two rules in one slot (`SecurityRuleConflict`), so the older record stays out."""
    slot = (record.properties.get("direction"), record.properties.get("priority"))
    return any(
        other_key != key and (other.properties.get("direction"), other.properties.get("priority")) == slot
        for other_key, other in rules.items()
    )


def refresh_states(nsg: NsgRecord, in_flight: Iterable[Change]) -> None:
    """Derive every rule's and the NSG's provisioning state from the changes still in flight on it."""
    deleting: set[int] = set()
    updating: set[int] = set()
    busy = False
    for change in in_flight:
        for part in change.walk():
            busy = True
            deleting.update(id(r) for r in part.deleting.values())
            updating.update(id(r) for r in part.installed.values())
    for record in nsg.rules.values():
        if id(record) in deleting:
            record.state = "Deleting"
        elif id(record) in updating:
            record.state = "Updating"
        else:
            record.state = "Succeeded"
    nsg.state = "Updating" if busy else "Succeeded"
