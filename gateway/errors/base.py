"""The roots of the exception tree drawn in :mod:`gateway.errors`: every other error subclasses one of these."""

from __future__ import annotations
from typing import ClassVar

__all__ = [
    "GatewayError", "ConfigError", "ConfigUnreadable", "ClientFault", "ServerFault", "UpstreamError",
    "CommandError",
]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    code: ClassVar[str] = "GatewayError"
    fault: ClassVar[str] = "Server"
    http_status: ClassVar[int] = 500

    def __init__(
        self,
        reason: str,
        *,
        destination: str | None = None,
        endpoint: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.destination = destination
        self.endpoint = endpoint
        self.detail = detail

    def fields(self) -> dict[str, str]:
        """The structured fields that are set, for the fault detail and the log."""
        found = {"destination": self.destination, "endpoint": self.endpoint, "detail": self.detail}
        return {k: v for k, v in found.items() if v is not None}


class ConfigError(GatewayError, ValueError):
    """Raised when endpoints.yaml (or an edit of it) is invalid."""

    code = "ConfigError"


class ConfigUnreadable(ConfigError, OSError):
    """Raised when the config file cannot be read at all (missing, not permitted): not invalid, absent."""


class ClientFault(GatewayError):
    """Base of faults the caller caused (SOAP 1.1 ``Client``, 1.2 ``Sender``)."""

    fault = "Client"
    http_status = 400


class ServerFault(GatewayError):
    """Base of faults on the gateway's side (SOAP 1.1 ``Server``, 1.2 ``Receiver``)."""


class UpstreamError(ServerFault):
    """Base of failures talking to an endpoint or peer gateway."""


class CommandError(GatewayError):
    """Base of the errors that end a command-line program (``bmrgw poll``, ``send``, ``refdb``)."""

    exit_code: int = 1
