"""What `jit` prints: results on stdout (human text, or JSON with `--json`), progress and errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from jitcli.durations import human_duration, parse_time
from jitcli.errors import CliError


class Output:
    """Routes results, progress and errors: stdout stays machine-readable under `--json`."""

    def __init__(
        self, *, json_mode: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def result(self, data: object, human: Callable[[], str]) -> None:
        """Print a command's result: `data` as JSON, or the text `human()` renders."""
        if self.json_mode:
            print(json.dumps(data, indent=2, sort_keys=True, default=str), file=self.stdout, flush=True)
        else:
            text = human()
            if text:
                print(text, file=self.stdout, flush=True)

    def progress(self, message: str) -> None:
        """A progress line on stderr (kept under `--json`, where stdout carries only the result)."""
        print(message, file=self.stderr, flush=True)

    def warn(self, message: str) -> None:
        """A warning on stderr."""
        print(f"warning: {message}", file=self.stderr, flush=True)

    def error(self, error: CliError, extra: dict[str, Any] | None = None) -> None:
        """An error: JSON on stdout under `--json` (with `extra` fields), always a readable line on stderr."""
        if self.json_mode:
            body = {**error.to_json(), **(extra or {})}
            print(json.dumps(body, indent=2, sort_keys=True, default=str), file=self.stdout, flush=True)
        status = getattr(error, "status", None)
        prefix = f"error ({status} {error.code})" if status else "error"
        print(f"jit: {prefix}: {error.message}", file=self.stderr, flush=True)
        if error.hint:
            print(f"  hint: {error.hint}", file=self.stderr, flush=True)


def until(expires_at: str | datetime, now: datetime | None = None) -> str:
    """`12:34:56Z (in 29m58s)`: the expiry both absolute and relative."""
    moment = parse_time(expires_at) if isinstance(expires_at, str) else expires_at
    now = now or datetime.now(UTC)
    left = (moment - now).total_seconds()
    relative = f"in {human_duration(left)}" if left > 0 else f"{human_duration(-left)} ago"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%SZ} ({relative})"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain aligned text table; `(none)` when there are no rows."""
    if not rows:
        return "(none)"
    rows = [[printable(str(c)) for c in row] for row in rows]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(h).upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def printable(text: str) -> str:
    """`text` with control and format characters (escape sequences, newlines, bidi overrides) written out as
    `\\x1b`, `\\n`…, so words from the broker (a justification, a name) cannot steer the terminal or break
    a table's lines."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _when(at: object) -> str:
    """A broker timestamp as `2026-05-04 10:42:00Z`; as it came when it does not read as one."""
    if not at:
        return ""
    try:
        return f"{parse_time(str(at)).astimezone(UTC):%Y-%m-%d %H:%M:%SZ}"
    except ValueError:
        return str(at)


def grants_table(grants: Sequence[dict[str, Any]], *, show_principal: bool = False) -> str:
    """`jit ls`: one line per grant."""
    headers = ["id", "vm", "port", "source", "status", "expires"]
    if show_principal:
        headers.insert(1, "principal")
    rows = []
    for g in grants:
        row = [
            str(g.get("id", "")),
            str(g.get("vm", "")),
            str(g.get("port", "")),
            str(g.get("source", "")),
            str(g.get("status", "")),
            until(str(g["expires_at"])) if g.get("expires_at") else "",
        ]
        if show_principal:
            row.insert(1, str(g.get("principal_name") or g.get("principal") or ""))
        rows.append(row)
    return table(rows, headers)


def requester(grant: dict[str, Any]) -> str:
    """Who asked for a grant: `Bob Builder`, else their object id."""
    return printable(str(grant.get("principal_name") or grant.get("principal") or "?"))


def approval_text(grant: dict[str, Any]) -> str:
    """A grant's decision in one line: `approved by Carol Operator at 2026-05-04 10:42:00Z: change CHG-42`."""
    approval = grant.get("approval") or {}
    status = str(grant.get("status") or "")
    verb = "denied" if status == "denied" else "approved"
    if not approval.get("decided_at"):
        return f"not decided ({status})"
    who = approval.get("decided_by_name") or approval.get("decided_by") or "an approver"
    reason = approval.get("reason")
    text = f"{verb} by {who} at {_when(approval['decided_at'])}" + (f": {reason}" if reason else "")
    return printable(text)


def _ago(at: object, now: datetime | None = None) -> str:
    """`2026-05-04 10:42:00Z (12m00s ago)`; as it came when it does not read as a time."""
    if not at:
        return ""
    try:
        moment = parse_time(str(at))
    except ValueError:
        return str(at)
    waited = ((now or datetime.now(UTC)) - moment).total_seconds()
    return f"{_when(at)} ({human_duration(max(0.0, waited))} ago)"


def iso_as_human(duration: object) -> str:
    """The broker's `PT10M` as `10m` (`PT1H30M`: `1h30m`, `PT90S`: `1m30s`); as it came when it does not
    read as a duration."""
    from jitcli.durations import parse_seconds

    if not duration:
        return ""
    try:
        text = human_duration(parse_seconds(str(duration)))
    except ValueError:
        return str(duration)
    return text.removesuffix("00s") if text.endswith("m00s") else text


def awaiting_table(grants: Sequence[dict[str, Any]]) -> str:
    """`jit ls --awaiting`: the requests waiting for me to approve, oldest first, with what they ask for."""
    rows = []
    for g in sorted(grants, key=lambda g: str(g.get("created_at") or "")):
        approval = g.get("approval") or {}
        rows.append(
            [
                str(g.get("id", "")),
                str(g.get("principal_name") or g.get("principal") or ""),
                str(g.get("vm", "")),
                str(g.get("port", "")),
                str(g.get("source", "")),
                iso_as_human(approval.get("requested_duration")),
                _ago(g.get("created_at")),
                str(g.get("justification") or ""),
            ]
        )
    headers = ["id", "requester", "vm", "port", "source", "duration", "waiting since", "justification"]
    return table(rows, headers)


def vms_table(vms: Sequence[dict[str, Any]]) -> str:
    """`jit vms`: the VMs the caller may request, with their ports and state."""
    rows = []
    for vm in vms:
        ports = vm.get("ports") or vm.get("allowed_ports") or []
        rows.append(
            [
                str(vm.get("name") or vm.get("vm") or ""),
                str(vm.get("resource_group") or ""),
                ",".join(str(p) for p in ports) if isinstance(ports, list) else str(ports),
                str(vm.get("os") or vm.get("os_type") or ""),
                str(vm.get("power_state") or vm.get("state") or ""),
                _approval_of(vm),
            ]
        )
    return table(rows, ["name", "resource group", "ports", "os", "state", "approval"])


def _approval_of(vm: dict[str, Any]) -> str:
    """Who must say yes before the VM opens ("by JIT.Approver"), or "-" when nobody needs to."""
    if not vm.get("approval_required"):
        return "-"
    role = vm.get("approver_role")
    return f"by {role}" if role else "required"


def audit_table(events: Sequence[dict[str, Any]]) -> str:
    """`jit audit`: one line per event, newest first; the VM by name, reason and detail together."""
    rows = []
    for e in events:
        vm_id = str(e.get("vm_id") or "")
        why = [str(e[k]) for k in ("reason", "detail") if e.get(k)]
        rows.append(
            [
                _when(e.get("at")),
                str(e.get("kind") or ""),
                str(e.get("principal") or ""),
                str(e.get("actor") or ""),
                vm_id.rstrip("/").rsplit("/", 1)[-1],
                "" if e.get("port") is None else str(e["port"]),
                str(e.get("source") or ""),
                str(e.get("grant_id") or ""),
                " | ".join(why),
            ]
        )
    return table(rows, ["time", "kind", "who", "by", "vm", "port", "source", "grant", "reason"])


def key_values(data: dict[str, Any]) -> str:
    """`key: value` lines, lists joined by commas."""
    width = max((len(k) for k in data), default=0)
    lines = []
    for key, value in data.items():
        shown = ", ".join(str(v) for v in value) if isinstance(value, list) else value
        lines.append(f"{key.ljust(width)}  {'' if shown is None else shown}")
    return "\n".join(lines)


def whoami_text(me: dict[str, Any]) -> str:
    """`jit whoami`: the broker's answer as `key: value` lines, whether I may name a source spelled out."""
    shown = dict(me)
    if "may_name_sources" in shown:
        shown["may_name_sources"] = (
            "yes, on any VM (inside a VM's jit-sources allow-list when it has one)"
            if shown["may_name_sources"]
            else "no, only where a VM's jit-sources allow-list holds the source"
        )
    return key_values(shown)
