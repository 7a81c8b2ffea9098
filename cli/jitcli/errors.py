"""The CLI's errors: each knows the message to show and the exit code to leave with.

CliError                  anything `jit` reports and exits on
├── ConfigError           a setting is missing or malformed
│   └── InsecureBrokerUrl a plain http:// broker URL that is not on this machine
├── AuthError             no token could be obtained
├── InvalidDuration       a duration (or an audit query's time) the broker would refuse (400), caught first
├── BrokerError           the broker answered with an error body (status, code, message)
├── BrokerUnreachable     no HTTP answer at all (DNS, refused, TLS, timeout)
├── GrantFailed           a grant the broker accepted (202) ended failed (or closed) instead of active
│   ├── ApprovalDenied    an approver denied the request
│   └── NotApproved       the request expired unanswered, was withdrawn, or still waited past its wait_until
├── GrantPending          a grant the broker accepted (202) was still pending when `jit` stopped waiting
├── UnsafeTarget          a login name or host that could pass for a client option
├── PortTimeout           the grant was made but the port never answered
└── ClientMissing         no ssh / RDP client to run
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jitcli.exitcodes import ExitCode, exit_code_for_status

if TYPE_CHECKING:
    from jitcli.models import Grant


class CliError(Exception):
    """An error `jit` reports on stderr (or as JSON) and exits on."""

    exit_code: ExitCode = ExitCode.ERROR
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, object]:
        """The machine-readable form printed under `--json`."""
        body: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "exit_code": int(self.exit_code),
        }
        if self.hint:
            body["hint"] = self.hint
        return {"error": body}


class ConfigError(CliError):
    """A setting is missing or malformed."""

    code = "config_error"


class InsecureBrokerUrl(ConfigError):
    """A broker URL over which the bearer token would travel in clear text (http:// off this machine)."""

    code = "insecure_broker_url"


class AuthError(CliError):
    """No access token for the broker could be obtained."""

    exit_code = ExitCode.AUTH
    code = "auth_error"


class InvalidDuration(CliError):
    """A duration outside the grammar the broker shares with `jit` (jitcli.durations), or an audit query's
    time without its zone: refused before any request, with the exit code and error code the broker's 400
    would have given."""

    exit_code = ExitCode.INVALID_REQUEST
    code = "invalid_request"


class BrokerError(CliError):
    """The broker answered with an error; carries its status, error code and message."""

    def __init__(self, status: int, code: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.exit_code = exit_code_for_status(status, code)

    def to_json(self) -> dict[str, object]:
        """The broker's error body, plus the HTTP status and `jit`'s exit code."""
        body = super().to_json()
        error = body["error"]
        assert isinstance(error, dict)
        error["status"] = self.status
        return body


class BrokerUnreachable(CliError):
    """No HTTP answer from the broker (refused, DNS, TLS, timeout)."""

    exit_code = ExitCode.BROKER_UNAVAILABLE
    code = "broker_unreachable"


class GrantFailed(CliError):
    """A grant answered `202 Accepted` ended `failed` (or revoked, expired) instead of becoming active."""

    exit_code = ExitCode.BROKER_UNAVAILABLE
    code = "grant_failed"

    def __init__(self, grant: Grant) -> None:
        reason = grant.raw.get("reason")
        what = "failed" if grant.status == "failed" else f"was {grant.status or 'closed'} before it opened"
        why = reason or "the broker gave no reason"
        super().__init__(f"grant {grant.id} for port {grant.port} on {grant.vm} {what}: {why}")
        self.grant = grant

    def to_json(self) -> dict[str, object]:
        """The error, plus the grant as the broker last showed it."""
        return {**super().to_json(), "grant": self.grant.raw}


class ApprovalDenied(GrantFailed):
    """A request on a VM that needs approval was denied: who denied it and why, in the approver's words."""

    exit_code = ExitCode.APPROVAL_DENIED
    code = "approval_denied"

    def __init__(self, grant: Grant) -> None:
        from jitcli.output import printable  # another person's words: no control characters on the terminal

        approval = grant.approval
        who = approval.decider if approval else "an approver"
        why = (approval.reason if approval else None) or grant.raw.get("reason") or "no reason given"
        CliError.__init__(
            self, printable(f"{who} denied grant {grant.id} for port {grant.port} on {grant.vm}: {why}")
        )
        self.grant = grant


class NotApproved(GrantFailed):
    """A request on a VM that needs approval ended without one: nobody answered before its `wait_until`
    (`expired`, or still waiting when `jit` stopped), or it was withdrawn."""

    exit_code = ExitCode.NOT_APPROVED

    def __init__(self, grant: Grant, *, gave_up: str | None = None) -> None:
        what = f"grant {grant.id} for port {grant.port} on {grant.vm}"
        reason = grant.raw.get("reason")
        role = grant.approval.approver_role if grant.approval else None
        who = f"someone with the app role {role}" if role else "an approver"
        hint: str | None = f"ask again, and ask {who} to run `jit approve ID` while it waits"
        if gave_up is not None:
            self.code = "approval_timeout"
            message = f"nobody approved {what} by {gave_up}, when the request stopped waiting"
        elif grant.status == "withdrawn":
            self.code = "approval_withdrawn"
            message = f"{what} was withdrawn before anyone approved it"
            hint = None
        else:
            self.code = "approval_expired"
            message = f"nobody approved {what} in time: {reason or 'the request expired'}"
        CliError.__init__(self, message, hint=hint)
        self.grant = grant


class GrantPending(CliError):
    """A grant answered `202 Accepted` was still `pending` when `jit` stopped waiting for it."""

    exit_code = ExitCode.GRANT_PENDING
    code = "grant_pending"

    def __init__(self, grant: Grant, waited: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"grant {grant.id} is still pending after {waited}: the broker has not finished opening port "
            f"{grant.port} on {grant.vm}",
            hint=hint or f"check it with `jit ls --status pending`; close it with `jit revoke {grant.id}`",
        )
        self.grant = grant

    def to_json(self) -> dict[str, object]:
        """The error, plus the grant as the broker last showed it."""
        return {**super().to_json(), "grant": self.grant.raw}


class UnsafeTarget(CliError):
    """A login name or host that a client could read as an option (`-oProxyCommand=…`), or with spaces or
    control characters in it: refused rather than passed on."""

    code = "unsafe_target"


class PortTimeout(CliError):
    """The grant exists but the VM's port never answered the probe."""

    exit_code = ExitCode.PORT_TIMEOUT
    code = "port_timeout"


class ClientMissing(CliError):
    """No ssh / RDP client found on this machine."""

    exit_code = ExitCode.CLIENT_MISSING
    code = "client_missing"
