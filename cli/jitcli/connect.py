"""The connect flow of `jit ssh` / `jit rdp`: grant, wait for the port, run the client, renew, revoke."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from jitcli.api import Answer, BrokerClient
from jitcli.clients import Launch, check_host, check_login, rdp_launch, ssh_launch
from jitcli.durations import human_duration
from jitcli.errors import CliError, ConfigError, GrantFailed, PortTimeout
from jitcli.lease import Lease, seconds_left
from jitcli.models import AWAITING_APPROVAL, OPEN_STATUSES, WAITING_STATUSES, Grant, door_after_revoke
from jitcli.output import Output, until
from jitcli.pending import Latest, abandon, approval_notice, wait_active
from jitcli.probe import Spinner, wait_for_port
from jitcli.signals import Interrupted, SignalGuard


@dataclass(frozen=True)
class SessionRequest:
    """Everything `jit ssh` / `jit rdp` was asked to do."""

    vm: str
    protocol: str  # "ssh" or "rdp"
    resource_group: str | None = None
    subscription: str | None = None
    port: int | None = None
    duration: str | None = None
    source: str | None = None
    reason: str | None = None
    user: str | None = None
    extra: tuple[str, ...] = ()
    connect_host: str | None = None
    connect_port: int | None = None
    wait_s: float = 120.0
    grant_wait_s: float = 300.0

    def api_body(self) -> dict[str, Any]:
        """The `POST /api/v1/grants` body: a port when given, else the protocol's standard port."""
        body: dict[str, Any] = {
            "vm": self.vm,
            "resource_group": self.resource_group,
            "subscription": self.subscription,
            "duration": self.duration,
            "source": self.source,
            "justification": self.reason,
        }
        if self.port is not None:
            body["port"] = self.port
        else:
            body["protocol"] = self.protocol
        return body


def describe_grant(grant: Grant, answer: Answer) -> str:
    """`Opened port 22 on web-01 for 203.0.113.10/32 until … (grant g-…)`; on a VM that needs approval, who
    can approve and what to pass on."""
    if grant.status == AWAITING_APPROVAL:
        return approval_notice(grant, answer)
    if grant.status == "pending":
        verb = "The broker is opening"
    elif grant.status == "active":
        verb = "Opened"
    else:
        verb = f"Grant {grant.status}:"
    return (
        f"{verb} port {grant.port} on {grant.vm} for {grant.source} until {until(grant.expires_at)} "
        f"(grant {grant.id})"
    )


def unreachable_help(req: SessionRequest, grant: Grant, host: str, port: int) -> str:
    """Why a granted port may never answer, and how to pass `--source` (docs/design.md §5)."""
    return (
        f"The grant lets in {grant.source}, the address the broker saw you coming from. Likely causes:\n"
        "  - a VPN or split tunnel: traffic to the VM leaves from another address than that to the broker\n"
        "  - carrier-grade NAT or a proxy: your public address changes between connections\n"
        "  - a deny rule with a higher priority than the broker's, or a firewall on the VM, blocks it\n"
        f"  - nothing listens on {host}:{port} yet (the VM may still be booting)\n"
        f"If you know the address the VM will see, pass it: jit {req.protocol} {req.vm} --source <ADDRESS>/32"
    )


def _login(req: SessionRequest, grant: Grant) -> str | None:
    """Whom to log in as: `-l`, else the broker's user for the VM; refused if it could pass for an option."""
    user = req.user or grant.connect.username
    if user:
        check_login(user, "-l" if req.user else f"the broker (grant {grant.id}'s connect.username)")
    return user


def _launch_for(req: SessionRequest, user: str | None, host: str, port: int) -> Launch:
    if req.protocol == "ssh":
        return ssh_launch(host, port, user, req.extra)
    return rdp_launch(host, port, user, req.extra)


def run_session(client: BrokerClient, out: Output, req: SessionRequest) -> int:
    """Grant, wait, connect, renew, revoke; the client's exit code (or `jit`'s own when it never ran)."""
    with SignalGuard() as guard:
        try:
            # Ctrl-C while the broker is opening the port must not leave an open grant nobody revokes: the
            # request finishes first, then the grant is revoked below.
            with guard.deferred():
                grant, answer = client.create_grant(req.api_body())
                out.progress(describe_grant(grant, answer))
        except Interrupted:
            out.progress("interrupted before the broker answered; a grant it made closes at its expiry")
            return guard.exit_code()
        lease: Lease | None = None
        code: int | None = None
        error: CliError | None = None
        latest = Latest(grant)
        try:
            if guard.received is not None:
                raise Interrupted(guard.received)
            if grant.status in WAITING_STATUSES:
                # Accepted (202): wait for an approver (on a VM that needs one), then for the door, with the
                # spinner; Ctrl-C here withdraws the request, or revokes the grant once approved.
                grant, answer = wait_active(
                    client,
                    grant,
                    answer,
                    timeout=req.grant_wait_s,
                    label=f"waiting for the broker to open port {grant.port} on {grant.vm} ({grant.id})",
                    pending_hint="try again later, or let jit wait longer (setting grant_wait)",
                    seen=latest,
                )
            for warning in grant.warnings:
                out.warn(warning)
            with guard.deferred():
                lease = Lease(
                    client,
                    grant,
                    answer,
                    _lease_duration(req, grant, answer),
                    warn=out.warn,
                    grant_wait_s=req.grant_wait_s,
                )
                lease.start()
            if guard.received is not None:
                raise Interrupted(guard.received)
            code = _connect(out, req, grant, guard)
        except Interrupted:
            out.progress("interrupted")
        except GrantFailed as exc:
            grant, error = exc.grant, exc
        except CliError as exc:
            error = exc
        finally:
            if lease is None and grant.status in WAITING_STATUSES:
                grant = latest.grant  # the wait ended early: close the grant as the broker last showed it
            closed = _close(client, out, lease, grant, guard)
        result = {**closed, "renewals": lease.renewals if lease else 0}
        if error is not None:
            out.error(error, extra=result)
            return int(error.exit_code)
        final = code if code is not None else guard.exit_code()
        out.result({**result, "exit_code": final}, lambda: "")
        return final


def _lease_duration(req: SessionRequest, grant: Grant, answer: Answer) -> str | int:
    """What each renewal asks for: the duration the user chose, else the grant's length as first given."""
    if req.duration:
        return req.duration
    return max(1, round(seconds_left(grant, answer)))


def _close(
    client: BrokerClient, out: Output, lease: Lease | None, grant: Grant, guard: SignalGuard
) -> dict[str, Any]:
    """End the session's grant: withdraw a request still waiting for an approver, else stop renewing and
    revoke an open grant. The summary's `grant` (as last seen), `revoked` and `withdrawn`."""
    if lease is None and grant.status == AWAITING_APPROVAL:
        body = _withdraw(client, out, grant, guard)
        status = body.get("status") if body else None
        return {
            "grant": body or grant.raw,
            "revoked": status == "revoked",
            "withdrawn": status == "withdrawn",
        }
    revoked = _end_lease(client, out, lease, grant, guard)
    last = lease.grant if lease is not None else grant
    return {"grant": last.raw, "revoked": revoked, "withdrawn": False}


def _end_lease(
    client: BrokerClient, out: Output, lease: Lease | None, grant: Grant, guard: SignalGuard
) -> bool:
    """Stop renewing, then revoke an open grant; a second Ctrl-C gives up and leaves it to its expiry."""
    try:
        with guard.deferred():
            if lease is not None:
                lease.stop()
                if lease.revoked:
                    return True  # the broker refused a renewal and the lease revoked the grant then
                grant = lease.grant
            if grant.status not in OPEN_STATUSES:
                return False  # failed (or closed) before it opened: nothing to revoke
            return _revoke(client, out, grant)
    except Interrupted:
        out.warn(f"gave up revoking grant {grant.id}; it closes by itself at {until(grant.expires_at)}")
        return False


def _connect(out: Output, req: SessionRequest, grant: Grant, guard: SignalGuard) -> int:
    host = req.connect_host or grant.connect.host
    port = req.connect_port or grant.port
    if not host:
        raise ConfigError(
            f"the broker gave no address for {grant.vm}",
            hint="pass --connect-host (a bastion or tunnel address)",
        )
    check_host(host, "--connect-host" if req.connect_host else f"the broker (grant {grant.id}'s address)")
    user = _login(req, grant)
    shown = f"{host}:{port}" + (f" (via {host} for {grant.vm})" if req.connect_host else "")
    spinner = Spinner(f"waiting for {shown} to answer")
    spinner.start()
    took = wait_for_port(host, port, req.wait_s, tick=spinner.tick)
    if took is None:
        spinner.stop(f"{host}:{port} did not answer within {human_duration(req.wait_s)}")
        raise PortTimeout(
            f"port {port} at {host} never answered within {human_duration(req.wait_s)}",
            hint=unreachable_help(req, grant, host, port),
        )
    spinner.stop(f"{host}:{port} answered after {took:.1f}s")
    launch = _launch_for(req, user, host, port)
    out.progress("$ " + " ".join(launch.argv))
    try:
        code = guard.run(list(launch.argv))
        if launch.detached:
            guard.client_started = False
            out.progress("Press Enter when the remote desktop session is over, to close the port.")
            sys.stdin.readline()
        return code
    finally:
        if launch.cleanup is not None:
            launch.cleanup.unlink(missing_ok=True)


def _withdraw(client: BrokerClient, out: Output, grant: Grant, guard: SignalGuard) -> dict[str, Any] | None:
    """Withdraw a request still waiting for an approver (or revoke it, approved a moment ago); the broker's
    answer, or None when that failed (a second Ctrl-C gives up: the request then ends unanswered)."""
    try:
        with guard.deferred():
            body, line = abandon(client, grant)
    except Interrupted:
        out.warn(f"gave up withdrawing request {grant.id}; nobody approving it, it ends unanswered")
        return None
    except CliError as exc:
        out.warn(f"could not withdraw request {grant.id} ({exc.message}); `jit withdraw {grant.id}` does it")
        return None
    out.progress(line)
    return body


def _revoke(client: BrokerClient, out: Output, grant: Grant) -> bool:
    try:
        body = client.revoke(grant.id)
    except CliError as exc:
        message = exc.message
        out.warn(
            f"could not revoke grant {grant.id} ({message}); it closes by itself at {until(grant.expires_at)}"
        )
        return False
    out.progress(f"Revoked grant {grant.id}: {door_after_revoke(body, grant.port, grant.vm)}")
    return True
