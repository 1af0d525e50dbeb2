"""Faults of a relayed message: its shape, its caller, its signature, the limits and the endpoint."""

from __future__ import annotations

from .base import ClientFault, ServerFault, UpstreamError

__all__ = [
    "MalformedMessage", "UnsupportedMediaType", "MethodNotAllowed", "MessageTooLarge", "RequestTimeout", "UnknownDestination",
    "Unauthorized", "Forbidden", "RoutingLoop", "EndpointUnavailable", "EndpointTimeout",
    "InvalidSignature", "Expired", "Replay", "TooManyRequests", "EndpointBusy", "GatewayBusy",
    "LoginThrottled", "LoginBusy", "InsufficientStorage", "UnmappableCharacter", "SignedNotConvertible",
]


class MalformedMessage(ClientFault, ValueError):
    """Raised when the request is not a well-formed, acceptable SOAP envelope."""

    code = "MalformedMessage"


class UnsupportedMediaType(ClientFault, ValueError):
    """Raised when the Content-Type is neither SOAP 1.1 nor SOAP 1.2."""

    code = "MalformedMessage"
    http_status = 415


class MethodNotAllowed(ClientFault, ValueError):
    """Raised when a request uses a method its path does not take (``OPTIONS``, ``HEAD``, ``TRACE`` on ``/api``)."""

    code = "MalformedMessage"
    http_status = 405


class MessageTooLarge(ClientFault, ValueError):
    """Raised when the body exceeds ``gateway.max_message_bytes``."""

    code = "MessageTooLarge"
    http_status = 413


class RequestTimeout(ClientFault, TimeoutError):
    """Raised when the caller pauses longer than ``gateway.client_timeout`` while sending."""

    code = "RequestTimeout"
    http_status = 408


class UnknownDestination(ClientFault, LookupError):
    """Raised when no endpoint, peer or fallback peer serves the destination name."""

    code = "UnknownDestination"
    http_status = 404


class Unauthorized(ClientFault, PermissionError):
    """Raised when ``clients`` are configured and the caller did not prove who it is."""

    code = "Unauthorized"
    http_status = 401


class Forbidden(ClientFault, PermissionError):
    """Raised when an authenticated client asks for something its ``clients`` entry does not allow."""

    code = "Forbidden"
    http_status = 403


class RoutingLoop(ServerFault, RuntimeError):
    """Raised when the message already passed this gateway or too many gateways."""

    code = "RoutingLoop"


class EndpointUnavailable(UpstreamError, ConnectionError):
    """Raised when the endpoint refuses or resets the connection before answering."""

    code = "EndpointUnavailable"


class EndpointTimeout(UpstreamError, TimeoutError):
    """Raised when the endpoint does not answer within its timeout."""

    code = "EndpointTimeout"


class InvalidSignature(ClientFault, ValueError):
    """Raised when a message that must be WS-Security signed is not, or its signature does not verify."""

    code = "InvalidSignature"


class Expired(ClientFault, ValueError):
    """Raised when a signed message's wsu:Timestamp is outside the allowed clock skew or lifetime."""

    code = "Expired"


class Replay(ClientFault, ValueError):
    """Raised when a signature value was already accepted within its validity (a replayed message)."""

    code = "Replay"


class TooManyRequests(ClientFault, RuntimeError):
    """Raised when a client sends more requests per second than ``gateway.limits.client_rate``."""

    code = "TooManyRequests"
    http_status = 429


class EndpointBusy(UpstreamError, TimeoutError):
    """Raised when an endpoint stays at its ``max_concurrent`` requests for its whole ``queue_timeout``."""

    code = "EndpointBusy"
    http_status = 503


class GatewayBusy(ServerFault, RuntimeError):
    """Raised when a gateway process already holds ``gateway.limits.max_connections`` connections."""

    code = "GatewayBusy"
    http_status = 503


class LoginThrottled(TooManyRequests):
    """Raised when an address failed so many password checks lately that its next one is not even tried yet."""

    def __init__(self, reason: str, *, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class LoginBusy(GatewayBusy):
    """Raised when the password-check pool already holds as many checks as it may queue (a login flood)."""


class InsufficientStorage(ServerFault, RuntimeError):
    """Raised when storing would leave the data disk with less than ``gateway.min_free_bytes`` free."""

    code = "InsufficientStorage"
    http_status = 503


class UnmappableCharacter(ClientFault, ValueError):
    """Raised when a character has no mapping in an endpoint's character profile (``unmappable: refuse``)."""

    code = "UnmappableCharacter"
    http_status = 422

    def __init__(self, reason: str, *, character: str, position: int, line: int, column: int,
                 destination: str | None = None) -> None:
        super().__init__(reason, destination=destination, detail=f"{_code_points(character)} at {line}:{column}")
        self.character = character
        self.position = position
        self.line = line
        self.column = column


class SignedNotConvertible(ClientFault, ValueError):
    """Raised when a WS-Security-signed message is routed to an endpoint with a character profile that does
    not re-sign (``endpoints.NAME.wss.sign``): converting it would break its signature."""

    code = "SignedNotConvertible"
    http_status = 422


def _code_points(text: str) -> str:
    return " ".join(f"U+{ord(c):04X}" for c in text)
