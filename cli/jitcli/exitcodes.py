"""The exit codes `jit` promises, so scripts can tell "denied" from "VM stopped" from "port never answered".

`jit ssh` and `jit rdp` exit with the client's own exit code once the client has run; the codes below are for
the cases where `jit` stops before (or instead of) running a client.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes of `jit` (also listed in `jit --help` and cli/README.md)."""

    OK = 0
    ERROR = 1  # anything not covered below, including bad settings
    USAGE = 2  # wrong arguments (argparse's own code)
    AUTH = 3  # no token could be obtained, or the broker rejected it (401)
    DENIED = 4  # the broker said no: no role, VM not opted in, policy (403)
    NOT_FOUND = 5  # no such VM or grant (404)
    VM_NOT_RUNNING = 6  # the VM is stopped or deallocated, or another conflict (409)
    PORT_TIMEOUT = 7  # the grant was made but the port never answered
    BROKER_UNAVAILABLE = 8  # broker unreachable, it failed upstream (5xx), or an accepted grant failed
    CLIENT_MISSING = 9  # no ssh / RDP client installed
    INVALID_REQUEST = 10  # the broker rejected the request as malformed (400/413/422)
    GRANT_PENDING = 11  # the broker accepted the grant (202); still pending when jit stopped waiting
    APPROVAL_DENIED = 12  # an approver denied the request (approval.reason says why)
    NOT_APPROVED = 13  # the request ended unapproved: nobody answered before wait_until, or it was withdrawn
    INTERRUPTED = 130  # Ctrl-C before a client ran (128 + SIGINT)


#: Broker error codes (docs/api.md) mapped to the exit code `jit` uses for them.
BROKER_ERROR_EXIT: dict[str, ExitCode] = {
    "unauthenticated": ExitCode.AUTH,
    "forbidden": ExitCode.DENIED,
    "vm_not_eligible": ExitCode.DENIED,
    "not_found": ExitCode.NOT_FOUND,
    "vm_not_running": ExitCode.VM_NOT_RUNNING,
    "no_nsg": ExitCode.VM_NOT_RUNNING,
    "conflict": ExitCode.VM_NOT_RUNNING,
    "invalid_request": ExitCode.INVALID_REQUEST,
    "payload_too_large": ExitCode.INVALID_REQUEST,
    "upstream_error": ExitCode.BROKER_UNAVAILABLE,
    "upstream_throttled": ExitCode.BROKER_UNAVAILABLE,
}


_STATUS_EXIT = {
    401: ExitCode.AUTH,
    403: ExitCode.DENIED,
    404: ExitCode.NOT_FOUND,
    409: ExitCode.VM_NOT_RUNNING,
}


def exit_code_for_status(status: int, code: str | None) -> ExitCode:
    """The exit code for a broker error: by its error code when known, else by HTTP status."""
    if code and code in BROKER_ERROR_EXIT:
        return BROKER_ERROR_EXIT[code]
    if status in _STATUS_EXIT:
        return _STATUS_EXIT[status]
    if status in (400, 413, 422):
        return ExitCode.INVALID_REQUEST
    if status >= 500:
        return ExitCode.BROKER_UNAVAILABLE
    return ExitCode.ERROR


HELP_TEXT = """exit codes:
  0    success (jit ssh / jit rdp: the client's own exit code once it ran)
  1    other error (bad settings, an http:// broker URL off this machine, unexpected answer)
  2    wrong arguments
  3    not signed in, or the broker rejected the token (401)
  4    denied by the broker: no role, VM not opted in, policy (403)
  5    no such VM or grant (404)
  6    VM not running, or another conflict (409)
  7    the port never answered after the grant
  8    broker unreachable or failing upstream (5xx), or an accepted grant failed
  9    no ssh / RDP client installed
  10   the broker rejected the request as invalid (400/413/422)
  11   the grant was still pending when jit stopped waiting (setting grant_wait)
  12   an approver denied the request (jit shows who and why)
  13   the request ended unapproved: nobody approved it before it expired, or it was withdrawn
  130  interrupted before a client ran"""
