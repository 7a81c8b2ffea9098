"""One function per `jit` command: read settings, call the broker, print the result, return the exit code."""

from __future__ import annotations

import argparse
from typing import Any

from jitcli.api import Answer, BrokerClient, check_broker_url, wire_moment
from jitcli.config import KEYS, Settings, set_value
from jitcli.durations import parse_seconds
from jitcli.errors import CliError, ConfigError
from jitcli.models import (
    AWAITING_APPROVAL,
    OPEN_STATUSES,
    WAITING_STATUSES,
    Grant,
    closed_line,
    door_after_revoke,
)
from jitcli.output import (
    Output,
    approval_text,
    audit_table,
    awaiting_table,
    grants_table,
    requester,
    until,
    vms_table,
    whoami_text,
)

#: `jit extend` without --duration (or a duration setting) pushes the expiry to now + this.
DEFAULT_EXTEND = "1h"

#: Command-line flags that set a setting (argparse dest -> config key).
FLAG_KEYS = {
    "broker": "broker_url",
    "resource_group": "resource_group",
    "subscription": "subscription",
    "duration": "duration",
    "source": "source",
    "connect_host": "connect_host",
    "connect_port": "connect_port",
    "wait": "wait",
}


class Context:
    """What every command needs: the parsed arguments, resolved settings, output and (lazily) the broker."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        flags = {key: _str_or_none(getattr(args, dest, None)) for dest, key in FLAG_KEYS.items()}
        self.settings = Settings(flags)
        self.out = Output(json_mode=bool(getattr(args, "json", False)))
        self.verbose = bool(getattr(args, "verbose", False))
        self._client: BrokerClient | None = None

    @property
    def client(self) -> BrokerClient:
        """The broker client, built on first use (so `jit config` never needs a broker or a token)."""
        if self._client is None:
            from jitcli.auth import provider_for

            url = check_broker_url(self.settings.require("broker_url"))
            self._client = BrokerClient(url, provider_for(self.settings), verbose=self.verbose)
        return self._client


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _int_setting(ctx: Context, name: str) -> int | None:
    value = ctx.settings.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a port number, not {value!r}") from exc


def _seconds_setting(ctx: Context, name: str) -> float:
    value = ctx.settings.require(name)
    try:
        return parse_seconds(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def cmd_session(ctx: Context) -> int:
    """`jit ssh` / `jit rdp`: the whole connect flow."""
    from jitcli.connect import SessionRequest, run_session

    a = ctx.args
    req = SessionRequest(
        vm=a.vm,
        protocol=a.command,
        resource_group=ctx.settings.get("resource_group"),
        subscription=ctx.settings.get("subscription"),
        port=a.port,
        duration=ctx.settings.get("duration"),
        source=ctx.settings.get("source"),
        reason=a.reason,
        user=a.user,
        extra=tuple(a.extra),
        connect_host=ctx.settings.get("connect_host"),
        connect_port=_int_setting(ctx, "connect_port"),
        wait_s=_seconds_setting(ctx, "wait"),
        grant_wait_s=_seconds_setting(ctx, "grant_wait"),
    )
    return run_session(ctx.client, ctx.out, req)


def _await_new_grant(ctx: Context, grant: Grant, answer: Answer) -> tuple[Grant, Answer]:
    """Wait for a grant the broker accepted but has not opened yet (for an approver first, on a VM that needs
    one); Ctrl-C meanwhile withdraws the request, or revokes the grant once approved."""
    from jitcli.pending import Latest, abandon, approval_notice, wait_active

    if grant.status not in WAITING_STATUSES:
        return grant, answer
    if grant.status == AWAITING_APPROVAL:
        ctx.out.progress(approval_notice(grant, answer))
    latest = Latest(grant)
    from jitcli.signals import interruptible

    try:
        with interruptible():
            return wait_active(
                ctx.client,
                grant,
                answer,
                timeout=_seconds_setting(ctx, "grant_wait"),
                label=f"waiting for the broker to open port {grant.port} on {grant.vm} (grant {grant.id})",
                seen=latest,
            )
    except KeyboardInterrupt:
        # Nobody has been told about this grant yet: close it rather than leave a door open until its expiry,
        # or a request an approver might still say yes to.
        try:
            _, line = abandon(ctx.client, latest.grant)
        except CliError as exc:
            ctx.out.warn(f"could not close grant {grant.id} ({exc.message}); it ends at its expiry")
        else:
            ctx.out.progress(line)
        raise


def cmd_grant(ctx: Context) -> int:
    """`jit grant VM --port N`: open only, and say where to connect."""
    a = ctx.args
    body: dict[str, Any] = {
        "vm": a.vm,
        "port": a.port,
        "resource_group": ctx.settings.get("resource_group"),
        "subscription": ctx.settings.get("subscription"),
        "duration": ctx.settings.get("duration"),
        "source": ctx.settings.get("source"),
        "justification": a.reason,
    }
    grant, answer = ctx.client.create_grant(body)
    verb = "Extended existing" if answer.status == 200 else "Opened"
    grant, answer = _await_new_grant(ctx, grant, answer)
    for warning in grant.warnings:
        ctx.out.warn(warning)

    def human() -> str:
        lines = [
            f"{verb} grant {grant.id}: port {grant.port} on {grant.vm} for {grant.source}",
            f"until    {until(grant.expires_at)}",
        ]
        if grant.approval is not None and grant.approval.decided_at is not None:
            lines.append(f"decision {approval_text(grant.raw)}")
        lines += [
            f"connect  {grant.connect.host or '?'}:{grant.port}"
            + (f" as {grant.connect.username}" if grant.connect.username else ""),
            f"revoke   jit revoke {grant.id}",
        ]
        return "\n".join(lines)

    ctx.out.result(grant.raw, human)
    return 0


def cmd_ls(ctx: Context) -> int:
    """`jit ls [--all]`: my grants, or everyone's for admins; `--awaiting`: the requests I may approve."""
    if ctx.args.awaiting:
        waiting = ctx.client.awaiting_me()
        if waiting and not ctx.out.json_mode:
            ctx.out.progress(
                "approve with `jit approve ID [--reason TEXT]`, deny with `jit deny ID --reason TEXT`"
            )
        ctx.out.result({"grants": waiting}, lambda: awaiting_table(waiting))
        return 0
    grants = ctx.client.list_grants(all_principals=ctx.args.all, status=ctx.args.status)
    ctx.out.result({"grants": grants}, lambda: grants_table(grants, show_principal=ctx.args.all))
    return 0


def cmd_revoke(ctx: Context) -> int:
    """`jit revoke ID | --mine`: close grants now."""
    if ctx.args.mine:
        live = (*OPEN_STATUSES, AWAITING_APPROVAL)  # a request still waiting for an approver is withdrawn
        ids = [str(g["id"]) for g in ctx.client.list_grants() if g.get("status") in live]
    else:
        ids = [ctx.args.id]
    revoked = [ctx.client.revoke(grant_id) for grant_id in ids]

    def line(g: dict[str, Any]) -> str:
        if g.get("status") == "withdrawn":
            return closed_line(g, g.get("port"), g.get("vm"))
        return f"Revoked {g.get('id')}: {door_after_revoke(g, g.get('port'), g.get('vm'))}"

    def human() -> str:
        if not revoked:
            return "No active grants to revoke."
        return "\n".join(line(g) for g in revoked)

    ctx.out.result({"revoked": revoked}, human)
    return 0


def cmd_extend(ctx: Context) -> int:
    """`jit extend ID [--duration D]`: keep a grant open longer, within policy."""
    grant, answer = ctx.client.extend(ctx.args.id, ctx.settings.get("duration") or DEFAULT_EXTEND)
    if grant.status == "pending":
        from jitcli.pending import wait_active
        from jitcli.signals import interruptible

        try:
            with interruptible():
                grant, answer = wait_active(
                    ctx.client,
                    grant,
                    answer,
                    timeout=_seconds_setting(ctx, "grant_wait"),
                    label=f"waiting for the broker to extend grant {grant.id}",
                    pending_hint="check it later with `jit ls`",
                )
        except KeyboardInterrupt:
            ctx.out.progress(f"stopped waiting; the broker may still extend grant {grant.id} (`jit ls`)")
            raise
    ctx.out.result(grant.raw, lambda: f"Grant {grant.id} now lasts until {until(grant.expires_at)}")
    return 0


def cmd_approve(ctx: Context) -> int:
    """`jit approve ID [--reason TEXT]`: say yes to someone's request; its door opens now, for the duration
    they asked for, counted from this moment."""
    grant, _ = ctx.client.approve(ctx.args.id, ctx.args.reason)

    def human() -> str:
        opened = (
            f"port {grant.port} on {grant.vm} is open for {grant.source}"
            if grant.status == "active"
            else f"the broker is opening port {grant.port} on {grant.vm} for {grant.source} ({grant.status})"
        )
        return "\n".join(
            [
                f"Approved grant {grant.id} of {requester(grant.raw)}: {opened}",
                f"until     {until(grant.expires_at)}",
                f"decision  {approval_text(grant.raw)}",
            ]
        )

    ctx.out.result(grant.raw, human)
    return 0


def cmd_deny(ctx: Context) -> int:
    """`jit deny ID --reason TEXT`: say no, and why (the requester reads it)."""
    grant = ctx.client.deny(ctx.args.id, ctx.args.reason)

    def human() -> str:
        return "\n".join(
            [
                f"Denied grant {grant.id} of {requester(grant.raw)}: "
                f"port {grant.port} on {grant.vm} stays closed",
                f"decision  {approval_text(grant.raw)}",
            ]
        )

    ctx.out.result(grant.raw, human)
    return 0


def cmd_withdraw(ctx: Context) -> int:
    """`jit withdraw ID`: drop my request while it waits for an approver (idempotent)."""
    body = ctx.client.withdraw(ctx.args.id)
    status = str(body.get("status") or "")

    def human() -> str:
        if status == "withdrawn":
            return closed_line(body, body.get("port"), body.get("vm"))
        return f"Grant {body.get('id')} is already {status}: there is nothing to withdraw"

    ctx.out.result(body, human)
    return 0


def cmd_vms(ctx: Context) -> int:
    """`jit vms`: the VMs I may ask for."""
    vms = ctx.client.vms()
    ctx.out.result({"vms": vms}, lambda: vms_table(vms))
    return 0


def cmd_audit(ctx: Context) -> int:
    """`jit audit`: the broker's audit trail, newest first, every page (or the newest `--limit`)."""
    a = ctx.args
    params: dict[str, str] = {}
    for name in ("since", "until"):
        value = getattr(a, name, None)
        if value:
            params[name] = wire_moment(value, name)
    if a.kind:
        params["kind"] = a.kind
    if a.vm:
        params["vm"] = a.vm
    if a.user:
        params["user"] = str(ctx.client.whoami()["principal"]) if a.user == "me" else a.user
    events, more = ctx.client.audit(params, most=a.limit)
    if more:
        ctx.out.progress(
            f"showing the newest {len(events)} events; more match (raise --limit, or narrow --since/--until)"
        )
    ctx.out.result(events, lambda: audit_table(events))
    return 0


def cmd_whoami(ctx: Context) -> int:
    """`jit whoami`: who the broker thinks I am, my roles, the address it sees, whether I may name sources."""
    me = ctx.client.whoami()
    ctx.out.result(me, lambda: whoami_text(me))
    return 0


def cmd_config(ctx: Context) -> int:
    """`jit config get [KEY] | set KEY VALUE | unset KEY | path`."""
    a, settings = ctx.args, ctx.settings
    if a.action == "path":
        ctx.out.result({"path": str(settings.path)}, lambda: str(settings.path))
        return 0
    if a.action == "set":
        set_value(settings.path, a.key, a.value)
        ctx.out.result({"key": a.key, "value": a.value, "path": str(settings.path)}, lambda: "")
        return 0
    if a.action == "unset":
        set_value(settings.path, a.key, None)
        ctx.out.result({"key": a.key, "path": str(settings.path)}, lambda: "")
        return 0
    names = [a.key] if a.key else list(KEYS)
    resolved = {name: settings.setting(name) for name in names}
    if a.key:
        one = resolved[a.key]
        ctx.out.result({"key": a.key, "value": one.value, "source": one.source}, lambda: one.value or "")
        return 0 if one.value is not None else 1
    data = {name: {"value": s.value, "source": s.source} for name, s in resolved.items()}
    ctx.out.result(
        data,
        lambda: "\n".join(
            f"{n} = {s.value if s.value is not None else ''}  # {s.source}" for n, s in resolved.items()
        ),
    )
    return 0
