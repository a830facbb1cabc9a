"""What the blocking and the async client share: addresses, durations, answers, and
the lease's state under the deadline rule."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import threading
import time
import urllib.parse
from typing import Callable

import grpc
from google.protobuf import duration_pb2

from ._errors import LeaseLost, LeasesError, Reason
from ._proto import leases_pb2

#: The one clock of the client: monotonic, as the deadline rule asks. (It does not count
#: a suspended machine; see the README.)
clock: Callable[[], float] = time.monotonic

#: Keep-alive pings every 5 s, as the Rust ClientLeaser does, so that a dead connection
#: is noticed even between heartbeats. Answers of `List` can be far larger than gRPC's
#: default 4 MiB limit (up to 10,000 leases of 64 KiB metadata), so no receive limit.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
]


def seconds(value: float | datetime.timedelta | None, what: str) -> float | None:
    """A duration given as seconds or a timedelta, as float seconds."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be seconds (int or float) or a timedelta, not {value!r}")
    return float(value)


def duration(secs: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(secs * 1e9))
    return d


def from_duration(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the server is, parsed from a URL."""

    address: str  # host:port, as gRPC wants it
    tls: bool


def parse_url(url: str) -> Target:
    """`http://host:port` (cleartext h2c) or `https://host:port` (TLS)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{url!r}: a server URL is http://HOST:PORT or https://HOST:PORT")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ValueError(f"{url!r}: a server URL has no path, query or fragment")
    tls = parsed.scheme == "https"
    port = parsed.port or (443 if tls else 80)
    host = parsed.hostname
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return Target(f"{host}:{port}", tls)


def parse_urls(urls: str | list[str] | tuple[str, ...]) -> list[str]:
    """The server URLs of a client: a list of URLs, or one string of comma-separated
    URLs (`"http://a:8895,http://b:8895"`), each checked by `parse_url`. Several URLs
    are servers of one store; the client uses the first that answers."""
    if isinstance(urls, str):
        parts = [part.strip() for part in urls.split(",")]
    else:
        parts = [part.strip() for part in urls]
    parts = [part for part in parts if part]
    if not parts:
        raise ValueError(f"{urls!r}: give at least one server URL")
    for part in parts:
        parse_url(part)
    return parts


def endpoint_order(count: int, first: int) -> list[int]:
    """Every endpoint's index once, starting at `first` and wrapping around."""
    return [(first + i) % count for i in range(count)]


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    if token is None:
        return ()
    token = token.strip()
    if not token:
        raise ValueError("the bearer token is empty")
    return (("authorization", f"Bearer {token}"),)


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """A lease as `info` and `list` show it. Durations are in seconds."""

    key: str
    #: The fencing token, a 64-bit unsigned integer.
    token: int
    #: The TTL the store holds the lease with.
    ttl: float
    #: Time left in the store unless the lease is renewed.
    expires_in: float
    metadata: bytes
    #: Revoked, and waiting for its holder to let go.
    revoked: bool
    acquired_at: datetime.datetime

    @staticmethod
    def of(message: leases_pb2.LeaseInfo) -> "LeaseInfo":
        return LeaseInfo(
            key=message.key,
            token=message.token,
            ttl=from_duration(message.ttl),
            expires_in=from_duration(message.expires_in),
            metadata=bytes(message.metadata),
            revoked=message.revoked,
            acquired_at=message.acquired_at.ToDatetime(tzinfo=datetime.timezone.utc),
        )


def acquire_request(key: str, ttl: float, metadata: bytes, wait: float | None):
    acquire = leases_pb2.Acquire(key=key, ttl=duration(ttl), metadata=metadata)
    if wait is not None:
        acquire.wait.CopyFrom(duration(wait))
    return leases_pb2.HoldRequest(acquire=acquire)


def resume_request(key: str, ttl: float, metadata: bytes, token: int):
    """The `acquire` that re-attaches the lease `token` (leases.proto, RE-ATTACHING)."""
    acquire = leases_pb2.Acquire(key=key, ttl=duration(ttl), metadata=metadata, resume=token)
    return leases_pb2.HoldRequest(acquire=acquire)


HEARTBEAT = leases_pb2.HoldRequest(heartbeat=leases_pb2.Heartbeat())
RELEASE = leases_pb2.HoldRequest(release=leases_pb2.Release())

ENDED_REASONS = {
    leases_pb2.Ended.RELEASED: Reason.RELEASED,
    leases_pb2.Ended.REVOKED: Reason.REVOKED,
    leases_pb2.Ended.LOST: Reason.LOST,
    leases_pb2.Ended.SHUTDOWN: Reason.SHUTDOWN,
}


#: A re-attach refused: the lease is gone (expired, released, revoked or taken over).
REFUSED = grpc.StatusCode.FAILED_PRECONDITION

#: Re-attaching: the first retry waits this long, each next one twice as long, up to
#: BACKOFF_MAX (never past the deadline).
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0


def attempt_bound(ttl: float, timeout: float, remaining: float) -> float:
    """How long one re-attach attempt waits for its answer: half a TTL (so that a
    silent server leaves time to try another), at most the client's timeout, never past
    the deadline."""
    return max(0.0, min(ttl / 2, timeout, remaining))


#: The statuses that end a held lease's `Hold` stream as an answer about the lease or
#: the requests; any other (UNAVAILABLE, and what grpcio makes of transport errors and
#: resets: INTERNAL, UNKNOWN, CANCELLED...) is a broken stream. The same split as the
#: Rust ClientLeaser's (src/client/reattach.rs, `is_break`).
NOT_A_BREAK = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def breaks_stream(error: BaseException) -> bool:
    """Whether an error that ended a `Hold` stream after its grant is a broken stream
    that re-attaching may mend (a transport error, a lost connection, a server going
    away: UNAVAILABLE and the like) rather than the server's verdict on the lease or
    the requests (see NOT_A_BREAK)."""
    return (
        isinstance(error, grpc.RpcError)
        and hasattr(error, "code")
        and error.code() not in NOT_A_BREAK
    )


def describe_rpc_error(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


class State:
    """One lease's state under the deadline rule, shared by the reader of answers, the
    keeper (heartbeats and the deadline) and the holder. Thread-safe.

    The deadline is the instant a request was sent (its `acquire` or `heartbeat`, taken
    on `clock` just before the request is handed to gRPC, so never later than it went on
    the wire) plus the `time_left` of its answer, capped at the TTL. Answers come in
    request order, so each `renewed` pairs with the oldest unanswered heartbeat. Once
    the deadline has passed the lease is over, whatever comes later.
    """

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.changed = threading.Condition()
        self.deadline: float | None = None
        self.token: int | None = None
        self.acquired_at: float | None = None
        self.reason: Reason | None = None
        self.message: str | None = None
        self.ended_at: float | None = None
        self.answers = 0
        #: The stream broke and the client is re-attaching the lease (leases.proto,
        #: RE-ATTACHING): no heartbeats meanwhile; the deadline still holds.
        self.reattaching = False
        #: How many times the lease was re-attached on a new stream.
        self.reattachments = 0
        self._unanswered: collections.deque[float] = collections.deque()
        self._acquire_sent: float | None = None

    # Called with `changed` held by the caller or not: each method takes it itself.

    def acquire_sent(self, at: float) -> None:
        with self.changed:
            self._acquire_sent = at

    def granted(self, token: int, time_left: float, waited: bool = False) -> None:
        """Takes the grant. After an acquire that waited, the grant may have come long
        after the acquire was sent, so the deadline counted from it says nothing: the
        lease then has no deadline until the answer to a heartbeat sent at once
        confirms it (protocol.md, `Hold` step 2), and the holder must not act before."""
        now = clock()
        with self.changed:
            self.token = token
            self.acquired_at = now
            self.answers += 1
            if not waited:
                self.deadline = self._acquire_sent + min(time_left, self.ttl)
                if now >= self.deadline:
                    self._end(Reason.DEADLINE, "granted, but its deadline had already passed", now)
            self.changed.notify_all()

    def heartbeat_sent(self, at: float) -> bool:
        """Records a heartbeat about to be sent; False if the lease is over already."""
        with self.changed:
            if self.reason is not None:
                return False
            self._unanswered.append(at)
            return True

    def renewed(self, time_left: float) -> bool:
        """Takes a `renewed` answer; True if it ended the lease (late, or unasked)."""
        now = clock()
        with self.changed:
            if self.reason is not None:
                return False
            if not self._unanswered:
                return self._end(Reason.BROKEN, "the server answered a heartbeat never sent", now)
            sent = self._unanswered.popleft()
            self.answers += 1
            if self.deadline is not None and now >= self.deadline:
                return self._end(Reason.DEADLINE, self._deadline_message(), now)
            deadline = sent + min(time_left, self.ttl)
            if now >= deadline:
                # An answer already past its own deadline (a slow answer to an old
                # heartbeat, or no time left) confirms nothing.
                self.deadline = deadline
                return self._end(Reason.DEADLINE, self._deadline_message(), now)
            self.deadline = deadline
            self.changed.notify_all()
            return False

    def broke(self) -> bool:
        """The lease's stream broke: re-attach it. Heartbeats in flight on the broken
        stream will never be answered: they are forgotten. False if the lease is over."""
        with self.changed:
            if self.reason is not None:
                return False
            self._unanswered.clear()
            self.reattaching = True
            self.changed.notify_all()
            return True

    def resumed(self, token: int, sent: float, time_left: float) -> bool:
        """Takes the `granted` answer to a re-attaching `acquire` sent at `sent`: the
        deadline is counted from that instant, as for any answer (earlier too). True if
        it ended the lease: a grant of another token, or one past its deadline (the
        current one, or its own), never revives the lease."""
        now = clock()
        with self.changed:
            if self.reason is not None:
                return False
            if token != self.token:
                return self._end(
                    Reason.BROKEN,
                    f"re-attaching lease {self.token} was answered with token {token}",
                    now,
                )
            if self.deadline is not None and now >= self.deadline:
                return self._end(Reason.DEADLINE, self._deadline_message(), now)
            deadline = sent + min(time_left, self.ttl)
            self.deadline = deadline
            if now >= deadline:
                return self._end(Reason.DEADLINE, self._deadline_message(), now)
            self._unanswered.clear()
            self.answers += 1
            self.reattaching = False
            self.reattachments += 1
            self.changed.notify_all()
            return False

    def expire_if_due(self) -> bool:
        """Ends the lease if its deadline has passed; True if this call ended it."""
        now = clock()
        with self.changed:
            if self.reason is None and self.deadline is not None and now >= self.deadline:
                return self._end(Reason.DEADLINE, self._deadline_message(), now)
            return False

    def end(self, reason: Reason, message: str) -> bool:
        """Ends the lease with a reason, unless it has ended already; True if it did."""
        with self.changed:
            return self._end(reason, message, clock())

    def _end(self, reason: Reason, message: str, now: float) -> bool:
        if self.reason is not None:
            return False
        self.reason, self.message, self.ended_at = reason, message, now
        self.reattaching = False
        self.changed.notify_all()
        return True

    def _deadline_message(self) -> str:
        return (
            "no answer from the server confirmed the lease before its deadline "
            "(the instant of the last answered request plus its time left)"
        )

    def time_left(self) -> float:
        with self.changed:
            if self.reason is not None or self.deadline is None:
                return 0.0
            return max(0.0, self.deadline - clock())

    def check(self) -> None:
        self.expire_if_due()
        with self.changed:
            if self.reason is not None:
                raise LeaseLost(self.reason, self.message or "")

    def lost_error(self) -> LeaseLost:
        with self.changed:
            return LeaseLost(self.reason or Reason.BROKEN, self.message or "")


def handed_over(ended: leases_pb2.Ended) -> bool:
    """Whether an `ended` answer hands the lease over (a draining server): it lives on
    in the store, to be re-attached through another server."""
    return ended.reason == leases_pb2.Ended.HANDED_OVER


def ended_reason(ended: leases_pb2.Ended, released_by_us: bool) -> tuple[Reason, str]:
    """The reason an `ended` answer gives. `ended { RELEASED }` that answers no release
    of ours is a broken stream (so is `HANDED_OVER`, when it is not re-attached)."""
    if handed_over(ended):
        return Reason.BROKEN, f"the server handed the lease over: {ended.message}"
    reason = ENDED_REASONS.get(ended.reason, Reason.LOST)
    if reason is Reason.RELEASED and not released_by_us:
        return Reason.BROKEN, f"the server ended the lease as released: {ended.message}"
    return reason, ended.message or reason.value


def check_ttl(ttl: float | None) -> float:
    if ttl is None or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return ttl


def check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a key is a string such as '/system/jobs/x', not {key!r}")
    return key


def check_metadata(metadata: bytes | str | None) -> bytes:
    if metadata is None:
        return b""
    if isinstance(metadata, str):
        return metadata.encode()
    return bytes(metadata)


__all__ = ["LeasesError"]
