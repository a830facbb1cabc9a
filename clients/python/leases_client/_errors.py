"""The client's exceptions: one class per thing a caller can do something about."""

from __future__ import annotations

import enum

import grpc


class Reason(enum.Enum):
    """Why a lease ended."""

    #: The holder released it (`release()` or the end of its `with` block).
    RELEASED = "released"
    #: Revoked by an operator, through any server.
    REVOKED = "revoked"
    #: The server lost it (renewal failed, its deadline passed, or no heartbeat came).
    LOST = "lost"
    #: The server is shutting down.
    SHUTDOWN = "shutdown"
    #: The client's deadline passed without a newer confirmed answer (the deadline rule).
    DEADLINE = "deadline"
    #: The stream ended with an error status or broke (transport error).
    BROKEN = "broken"


class LeasesError(Exception):
    """Any error of this client. `code` is the gRPC status code, when there was one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        self.code = code


class Conflict(LeasesError):
    """Someone else holds the key (the server's "lease already held")."""


class WaitTimedOut(LeasesError):
    """The key stayed held for the whole `wait`."""


class InvalidArgument(LeasesError):
    """The server refused the request: a bad key, TTL, wait or metadata. Do not retry
    it unchanged. `ttl_refusal` is the `leases-ttl-refusal` trailer, if there was one
    (for example "too-short 1.000000000 5.000000000")."""

    def __init__(self, message, code=None, ttl_refusal: str | None = None):
        super().__init__(message, code)
        self.ttl_refusal = ttl_refusal


class Unauthenticated(LeasesError):
    """A missing or wrong bearer token."""


class Unavailable(LeasesError):
    """The server or its store cannot be reached, or did not answer in time. Retry
    with backoff."""


class LeaseLost(LeasesError):
    """The lease is over: raised by `Lease.check()` once it has ended for any reason
    but the holder's own release. `reason` is a `Reason`."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(f"lease {reason.value}: {message}")
        self.reason = reason
        self.detail = message


def from_rpc_error(error: grpc.RpcError, waited: bool = False) -> LeasesError:
    """The exception for a gRPC error of a call that had not granted a lease yet."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and details == "lease already held":
        return Conflict(details, code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and waited:
        return WaitTimedOut(details, code)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        refusal = None
        trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailers or ():
            if key == "leases-ttl-refusal":
                refusal = value
        return InvalidArgument(details, code, refusal)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(details, code)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(details, code)
    return LeasesError(f"{code.name if code else 'error'}: {details}", code)
