"""A Python client of `leases serve`, over its native protocol (`leases.v1.Leases`).

    client = leases_client.Client("http://127.0.0.1:8895", token=None, timeout=10)
    with client.hold("/system/jobs/x", ttl=10, metadata=b"host-a") as lease:
        while work_left():
            lease.check()            # raises LeaseLost once the lease is over
            write(resource, fence=lease.token)

The client keeps the protocol's deadline rule (docs/protocol.md): it heartbeats every
TTL/4; its deadline is the instant the last answered request was sent plus the
`time_left` of that answer; at that deadline, without a newer confirmed answer, the
lease is lost (`lease.lost` set, `on_lost` called) even if the stream stays silent.
`AsyncClient` is the same over grpc.aio, with `async with` and an `asyncio.Event`.

A client may be given several servers of one store (a list of URLs, or a comma-separated
string); a lease whose stream breaks is re-attached, same token, through another of them
or the same one, before its deadline, without its holder noticing (`reattach=False`
turns that off).
"""

from ._aio import AsyncClient, AsyncLease
from ._core import LeaseInfo
from ._errors import (
    Conflict,
    InvalidArgument,
    LeaseLost,
    LeasesError,
    Reason,
    Unauthenticated,
    Unavailable,
    WaitTimedOut,
)
from ._sync import Client, Lease

__all__ = [
    "AsyncClient",
    "AsyncLease",
    "Client",
    "Conflict",
    "InvalidArgument",
    "Lease",
    "LeaseInfo",
    "LeaseLost",
    "LeasesError",
    "Reason",
    "Unauthenticated",
    "Unavailable",
    "WaitTimedOut",
]
