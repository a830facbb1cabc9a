"""The blocking client: threads for the stream's answers and for the heartbeats."""

from __future__ import annotations

import datetime
import queue
import threading
import weakref
from typing import Callable

import grpc

from . import _core
from ._core import LeaseInfo, State, clock
from ._errors import LeaseLost, Reason, Unavailable, from_rpc_error
from ._proto import leases_pb2, leases_pb2_grpc

Seconds = float | datetime.timedelta

_END_OF_REQUESTS = object()


class Client:
    """A client of one `leases serve` (the native protocol, `leases.v1.Leases`).

    `url` is `http://HOST:PORT` (cleartext) or `https://HOST:PORT` (TLS; `ca` is a PEM
    bundle to trust instead of the system's). `token` is the server's bearer token, if it
    was started with `--token-file`. `timeout` bounds every unary call and the wait for
    the first answer of `hold` (after its `wait`), in seconds.

    A lease is tied to the server it was acquired through: re-attaching it through
    another server of the same store is not implemented yet, so losing that server
    loses the lease (at its deadline at the latest).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 10.0,
        ca: bytes | None = None,
    ):
        target = _core.parse_url(url)
        self.url = url
        self.timeout = float(timeout)
        self._metadata = _core.auth_metadata(token)
        if target.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            self._channel = grpc.secure_channel(
                target.address, credentials, options=_core.CHANNEL_OPTIONS
            )
        else:
            self._channel = grpc.insecure_channel(target.address, options=_core.CHANNEL_OPTIONS)
        self._stub = leases_pb2_grpc.LeasesStub(self._channel)

    def close(self) -> None:
        """Closes the connection; leases still held through it break."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def hold(
        self,
        key: str,
        ttl: Seconds,
        metadata: bytes | str | None = None,
        wait: Seconds | None = None,
        on_lost: Callable[["Lease"], None] | None = None,
    ) -> "Lease":
        """Acquires `key` for `ttl` seconds, renewed in the background until released.

        Use it as a context manager (`with client.hold(...) as lease:`), which releases
        the lease at the end of the block, or call `release()` yourself. `wait`: wait up
        to this long for a held key instead of raising `Conflict`. `on_lost(lease)` is
        called once, from a background thread, when the lease ends other than by
        `release()`, right after `lease.lost` is set (never for a lease `hold` did not
        return). A `Lease` dropped without `release()` is released when it is garbage
        collected. Raises `Conflict`, `WaitTimedOut`, `InvalidArgument`,
        `Unauthenticated` or `Unavailable`.
        """
        holder = _Holder(
            self,
            _core.check_key(key),
            _core.check_ttl(_core.seconds(ttl, "ttl")),
            _core.check_metadata(metadata),
            _core.seconds(wait, "wait"),
            on_lost,
        )
        lease = Lease(holder)
        try:
            holder.acquire()
        except BaseException:
            lease._finalizer.detach()
            holder.abandon("hold() did not hand the lease over")
            raise
        return lease

    def revoke(self, key: str) -> bool:
        """Revokes the current lease on `key`, whoever holds it; False if nobody did."""
        answer = self._unary(self._stub.Revoke, leases_pb2.KeyRequest(key=_core.check_key(key)))
        return answer.revoked

    def info(self, key: str) -> LeaseInfo | None:
        """The current lease on `key`, or None."""
        answer = self._unary(self._stub.Info, leases_pb2.KeyRequest(key=_core.check_key(key)))
        return LeaseInfo.of(answer.lease) if answer.HasField("lease") else None

    def list(self, prefix: str = "", limit: int = 0) -> list[LeaseInfo]:
        """The live leases whose key starts with `prefix` (a plain string prefix), in key
        order, at most `limit` (0: the server's limit, 10,000)."""
        answer = self._unary(self._stub.List, leases_pb2.ListRequest(prefix=prefix, limit=limit))
        return [LeaseInfo.of(lease) for lease in answer.leases]

    def _unary(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


class Lease:
    """A lease held through a `Client.hold` stream.

    `token` is the fencing token: send it with every write to what the lease protects.
    `lost` is a `threading.Event` set when the lease ends other than by `release()`:
    revoked, lost by the server, the server shutting down, the stream broken, or the
    deadline rule (no confirmed answer before the deadline, even if the stream is
    silent). `check()` raises `LeaseLost` once the lease is over; `time_left()` is how
    long the holder may still act.

    A lease nobody references any more is released (as the Rust `Lease` is on drop):
    the background threads hold only the machinery, never the `Lease` itself.

    A lease is tied to the server it was acquired through (no re-attachment elsewhere
    yet).
    """

    def __init__(self, holder: "_Holder"):
        self._holder = holder
        self.key = holder.key
        self.ttl = holder.ttl
        self.metadata = holder.metadata
        self.lost = holder.lost
        holder.owner = weakref.ref(self)
        self._finalizer = weakref.finalize(self, holder.drop)

    # --- what the holder sees

    @property
    def token(self) -> int:
        return self._holder.state.token

    @property
    def reason(self) -> Reason | None:
        """Why the lease ended, or None while it is held."""
        return self._holder.state.reason

    @property
    def message(self) -> str | None:
        """The account of the end (the server's message, or the client's)."""
        return self._holder.state.message

    @property
    def deadline(self) -> float | None:
        """The current deadline, on `time.monotonic()`'s clock."""
        return self._holder.state.deadline

    @property
    def acquired_at(self) -> float | None:
        """When the grant was read, on `time.monotonic()`'s clock."""
        return self._holder.state.acquired_at

    @property
    def ended_at(self) -> float | None:
        """When the lease ended for this client, on `time.monotonic()`'s clock."""
        return self._holder.state.ended_at

    def time_left(self) -> float:
        """Seconds until the deadline; 0 once the lease is over."""
        self._holder.expire_if_due()
        return self._holder.state.time_left()

    def check(self) -> None:
        """Raises `LeaseLost` (with the reason) if the lease is over."""
        self._holder.expire_if_due()
        self._holder.state.check()

    def release(self) -> None:
        """Releases the lease, and returns once the server has freed the key (or the
        client's `timeout` has passed); from several threads at once, each returns then.

        If the deadline has passed, the lease is lost, not released: `reason` says why,
        `lost` is set and `on_lost` runs, and no `release` message is sent. After a loss
        it only closes the stream: no `release` message is ever sent for a lease that
        is over. It never raises `LeaseLost`: look at `reason` or `lost` afterwards.

        (The protocol allows a `release` after `ended { REVOKED }` or `SHUTDOWN`, to
        free the key early; but the server ends the call right after `ended`, and
        grpcio sends nothing on a finished call, so the key then goes back when the
        time the server promised has run out.)"""
        self._holder.release(wait=True)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        """Releases the lease (see `release`). A loss inside the block does not raise
        here: it is reported by `reason`, `lost` and `on_lost` (and by `check()`)."""
        self.release()

    def __repr__(self) -> str:
        state = self.reason.value if self.reason else "held"
        return f"<Lease {self.key} token={self.token} {state}>"


class _Holder:
    """The machinery of one `Lease`: the stream, its reader and keeper threads and the
    state. It holds the `Lease` only weakly (for `on_lost`), so that a dropped `Lease`
    is garbage collected, and released by its finalizer."""

    def __init__(self, client, key, ttl, metadata, wait, on_lost):
        self.key = key
        self.ttl = ttl
        self.metadata = metadata
        self.lost = threading.Event()
        self.owner: weakref.ref | None = None
        self._client = client
        self._wait = wait
        self._on_lost = on_lost
        self.state = State(ttl)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = None
        self._first_answer = threading.Event()
        self._acquire_error: BaseException | None = None
        self._release_sent = False
        self._released = threading.Event()
        self._handed_over = False
        self._reader: threading.Thread | None = None
        self._keeper: threading.Thread | None = None

    def release(self, wait: bool) -> None:
        """Ends the lease as released and sends `release`, unless it is over already
        (its deadline passed: then it is lost). Only the caller whose end succeeded
        sends and closes; with `wait`, the others wait for it to finish."""
        self.expire_if_due()
        if self.state.end(Reason.RELEASED, "released by the holder"):
            self._release_sent = True
            self._requests.put(_core.RELEASE)
            self._requests.put(_END_OF_REQUESTS)
            if not wait:
                # Dropped: the reader closes the call when the server ends it.
                self._released.set()
                return
            try:
                if self._reader is not None and self._reader is not threading.current_thread():
                    self._reader.join(self._client.timeout)
            finally:
                self._close()
                self._released.set()
        elif self.state.reason is Reason.RELEASED:
            if wait:
                self._released.wait(self._client.timeout)
        else:
            self._close()

    def drop(self) -> None:
        """The `Lease` was garbage collected: release it, without waiting."""
        try:
            self.release(wait=False)
        except Exception:  # a finalizer must not raise
            pass

    def abandon(self, message: str) -> None:
        """`hold()` failed or was interrupted after the stream opened: end the lease
        (nobody was handed it, so `on_lost` does not run) and reset the stream."""
        self.state.end(Reason.BROKEN, message)
        self._close()

    # --- the machinery

    def _request_iterator(self):
        while True:
            item = self._requests.get()
            if item is _END_OF_REQUESTS:
                return
            yield item

    def acquire(self) -> None:
        client = self._client
        waited = self._wait is not None
        # No gRPC deadline on the stream: it lives as long as the lease.
        self._call = client._stub.Hold(self._request_iterator(), metadata=client._metadata)
        self.state.acquire_sent(clock())
        self._requests.put(
            _core.acquire_request(self.key, self.ttl, self.metadata, self._wait)
        )
        self._reader = threading.Thread(
            target=self._read, name=f"leases-read {self.key}", daemon=True
        )
        self._reader.start()
        bound = (self._wait or 0.0) + client.timeout
        if not self._first_answer.wait(bound):
            raise Unavailable(f"no answer to acquire {self.key} within {bound:g}s")
        if self._acquire_error is not None:
            raise self._acquire_error
        state = self.state
        if waited and state.reason is None:
            # The grant may have come long after the acquire was sent, so it has no
            # deadline yet: count from a heartbeat's answer before handing it over, and
            # start the keeper only then.
            self._heartbeat()
            with state.changed:
                state.changed.wait_for(
                    lambda: state.answers >= 2 or state.reason is not None,
                    client.timeout,
                )
            if state.reason is None and state.answers < 2:
                raise Unavailable(f"no answer to the heartbeat confirming {self.key} in time")
        state.expire_if_due()
        with state.changed:
            if state.reason is None:
                self._handed_over = True
        if not self._handed_over:
            raise state.lost_error()
        self._keeper = threading.Thread(
            target=self._keep, name=f"leases-keep {self.key}", daemon=True
        )
        self._keeper.start()

    def _read(self) -> None:
        try:
            for answer in self._call:
                kind = answer.WhichOneof("kind")
                if kind == "granted" and not self._first_answer.is_set():
                    self.state.granted(
                        answer.granted.token,
                        _core.from_duration(answer.granted.time_left),
                        waited=self._wait is not None,
                    )
                    self._first_answer.set()
                elif kind == "renewed":
                    if self.state.renewed(_core.from_duration(answer.renewed.time_left)):
                        self._after_loss()
                elif kind == "ended":
                    reason, message = _core.ended_reason(answer.ended, self._release_sent)
                    if self.state.end(reason, message):
                        self._after_loss()
                else:
                    if self.state.end(Reason.BROKEN, f"an unexpected answer: {kind}"):
                        self._after_loss()
            if self.state.end(Reason.BROKEN, "the stream ended without an `ended` answer"):
                self._after_loss()
        except grpc.RpcError as error:
            if not self._first_answer.is_set():
                self._acquire_error = from_rpc_error(error, waited=self._wait is not None)
            elif self.state.end(Reason.BROKEN, _core.describe_rpc_error(error)):
                self._after_loss()
        except Exception as error:  # a bug of ours must still end the lease
            if self.state.end(Reason.BROKEN, _core.describe_rpc_error(error)):
                self._after_loss()
        finally:
            if not self._first_answer.is_set() and self._acquire_error is None:
                self._acquire_error = Unavailable("the stream ended before an answer")
            self._first_answer.set()
            if self._release_sent:
                self._close()

    def _heartbeat(self) -> None:
        # The instant is taken before the request is handed to gRPC: never later than
        # the moment it is sent, so the deadline counted from it is never too late.
        if self.state.heartbeat_sent(clock()):
            self._requests.put(_core.HEARTBEAT)

    def _keep(self) -> None:
        """Heartbeats every TTL/4; ends the lease at its deadline."""
        interval = self.ttl / 4
        state = self.state
        next_beat = clock() + interval
        while True:
            with state.changed:
                if state.reason is not None:
                    return
                now = clock()
                if now >= state.deadline:
                    break
                if now < next_beat:
                    state.changed.wait(min(next_beat, state.deadline) - now)
                    continue
            self._heartbeat()
            next_beat = max(next_beat + interval, clock())
        self.expire_if_due()

    def expire_if_due(self) -> None:
        if self.state.expire_if_due():
            self._after_loss()

    def _after_loss(self) -> None:
        """Runs once, after the lease ended other than by release."""
        reason = self.state.reason
        if reason is Reason.RELEASED:
            return
        self.lost.set()
        # No release after a loss: the stream is reset, and the server keeps the key
        # until the time it promised has run out.
        self._close()
        if self._on_lost is None or not self._handed_over:
            return
        lease = self.owner() if self.owner is not None else None
        if lease is None:
            return
        try:
            self._on_lost(lease)
        except Exception:  # the callback's own failure must not stop the machinery
            import traceback

            traceback.print_exc()

    def _close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._requests.put(_END_OF_REQUESTS)
