"""Errors that end a command-line program with a message and an exit code, never a traceback."""

from __future__ import annotations

from .base import CommandError

__all__ = ["UsageError", "PollError", "SendError", "RemoteFault", "FileError", "CertificateRefused"]


class UsageError(CommandError, ValueError):
    """Raised when an option, argument or address is unusable (URL without a scheme, port in use); exit 2."""

    exit_code = 2


class PollError(CommandError):
    """Raised when the poll client cannot go on (bad options, gateway unreachable with --once)."""

    code = "PollError"


class SendError(CommandError):
    """Raised when a send did not complete, with the exit code it maps to."""

    code = "SendError"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class RemoteFault(CommandError):
    """Raised when the gateway answers a refdb request with a SOAP fault (or not at all)."""

    def __init__(self, reason: str, *, code: str = "", http_status: int = 0,
                 attributes: dict[str, str] | None = None) -> None:
        super().__init__(reason, detail=code or None)
        self.remote_code = code
        self.status = http_status
        self.attributes = attributes or {}


class FileError(CommandError, ValueError):
    """Raised for a file that cannot be read as records; the message names the file and line."""


class CertificateRefused(CommandError, ValueError):
    """Raised when ``bmrgw pki install`` refuses a certificate; ``exit_code`` says why.

    3: the certificate does not belong to the key; 4: its chain does not lead to a trust
    anchor; 5: it is expired or not yet valid (or its issuer is).
    """

    code = "CertificateRefused"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
