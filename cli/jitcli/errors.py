"""The CLI's errors: each knows the message to show and the exit code to leave with.

CliError                  anything `jit` reports and exits on
├── ConfigError           a setting is missing or malformed
├── AuthError             no token could be obtained
├── BrokerError           the broker answered with an error body (status, code, message)
├── BrokerUnreachable     no HTTP answer at all (DNS, refused, TLS, timeout)
├── PortTimeout           the grant was made but the port never answered
└── ClientMissing         no ssh / RDP client to run
"""

from __future__ import annotations

from jitcli.exitcodes import ExitCode, exit_code_for_status


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


class AuthError(CliError):
    """No access token for the broker could be obtained."""

    exit_code = ExitCode.AUTH
    code = "auth_error"


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


class PortTimeout(CliError):
    """The grant exists but the VM's port never answered the probe."""

    exit_code = ExitCode.PORT_TIMEOUT
    code = "port_timeout"


class ClientMissing(CliError):
    """No ssh / RDP client found on this machine."""

    exit_code = ExitCode.CLIENT_MISSING
    code = "client_missing"
