"""The blocking client: threads for the stream's answers and for the heartbeats."""

from __future__ import annotations

import datetime
import queue
import threading
import weakref
from typing import Callable

import grpc
import grpc.aio

from . import _core
from ._core import LeaseInfo, State, clock
from ._errors import LeaseLost, Reason, Unavailable, from_rpc_error
from ._proto import leases_pb2, leases_pb2_grpc

Seconds = float | datetime.timedelta

_END_OF_REQUESTS = object()


class _Endpoint:
    """One server of the client: its URL, channel and stub."""

    def __init__(self, index: int, url: str, channel, stub):
        self.index = index
        self.url = url
        self.channel = channel
        self.stub = stub


def _channel(url: str, ca: bytes | None, aio: bool):
    target = _core.parse_url(url)
    module = grpc.aio if aio else grpc
    if target.tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        return module.secure_channel(target.address, credentials, options=_core.CHANNEL_OPTIONS)
    return module.insecure_channel(target.address, options=_core.CHANNEL_OPTIONS)


def _endpoints(urls: list[str], ca: bytes | None, aio: bool) -> list[_Endpoint]:
    endpoints = []
    for index, url in enumerate(urls):
        channel = _channel(url, ca, aio)
        endpoints.append(_Endpoint(index, url, channel, leases_pb2_grpc.LeasesStub(channel)))
    return endpoints


#: Status codes after which a call is tried through the next server: it did not get
#: through (refused, unreachable, shutting down, or no answer within the timeout).
_FAIL_OVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A revoke is sent again to the next server only when this one never took it: a revoke
# that ran out of time may still be carried out by its server, and sent again through
# another one it could end a holder granted after the call was made (one call ending two
# holders; the Rust client's `cancel_review` found it). UNAVAILABLE is a call that found
# no server to take it.
_REVOKE_FAIL_OVER = (grpc.StatusCode.UNAVAILABLE,)


class Client:
    """A client of `leases serve` (the native protocol, `leases.v1.Leases`).

    `urls` is one server's URL, a list of URLs, or one string of comma-separated URLs:
    several servers of one store (PostgreSQL or etcd). Each call goes to the first
    that answers (the last one that did, first); the others are tried when a server
    is unavailable. Each URL is `http://HOST:PORT` (cleartext) or `https://HOST:PORT`
    (TLS; `ca` is a PEM bundle to trust instead of the system's). `token` is the
    servers' bearer token, if they were started with `--token-file`. `timeout` bounds
    every unary call and the wait for the first answer of `hold` (after its `wait`), in
    seconds, through each server.

    `reattach` (default True): when a held lease's stream breaks (a transport error,
    UNAVAILABLE, a server handing its leases over as it stops), the client re-attaches
    the lease on a new stream, through another server or the same one, before its
    deadline, and the holder does not notice (see `Lease`). With `reattach=False` a
    broken stream ends the lease at once (reason `BROKEN`).
    """

    def __init__(
        self,
        urls: str | list[str] | tuple[str, ...],
        token: str | None = None,
        timeout: float = 10.0,
        ca: bytes | None = None,
        reattach: bool = True,
    ):
        self.urls = tuple(_core.parse_urls(urls))
        self.timeout = float(timeout)
        self.reattach = bool(reattach)
        self._metadata = _core.auth_metadata(token)
        self._endpoints = _endpoints(list(self.urls), ca, aio=False)
        self._preferred = 0
        self._closed = False

    @property
    def url(self) -> str:
        """The URL of the server the client tries first: the last one that answered."""
        return self.urls[self._preferred]

    def close(self) -> None:
        """Closes the connections; leases still held through them break (and are not
        re-attached: they end as `BROKEN`)."""
        self._closed = True
        for endpoint in self._endpoints:
            endpoint.channel.close()

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
        answer = self._unary(
            "Revoke", leases_pb2.KeyRequest(key=_core.check_key(key)), _REVOKE_FAIL_OVER
        )
        return answer.revoked

    def info(self, key: str) -> LeaseInfo | None:
        """The current lease on `key`, or None."""
        answer = self._unary("Info", leases_pb2.KeyRequest(key=_core.check_key(key)))
        return LeaseInfo.of(answer.lease) if answer.HasField("lease") else None

    def list(self, prefix: str = "", limit: int = 0) -> list[LeaseInfo]:
        """The live leases whose key starts with `prefix` (a plain string prefix), in key
        order, at most `limit` (0: the server's limit, 10,000)."""
        answer = self._unary("List", leases_pb2.ListRequest(prefix=prefix, limit=limit))
        return [LeaseInfo.of(lease) for lease in answer.leases]

    def _unary(self, method: str, request, fail_over=_FAIL_OVER):
        last = None
        for index in _core.endpoint_order(len(self._endpoints), self._preferred):
            call = getattr(self._endpoints[index].stub, method)
            try:
                answer = call(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                if error.code() in fail_over:
                    last = error
                    continue
                raise from_rpc_error(error) from None
            self._preferred = index
            return answer
        raise from_rpc_error(last) from None


class Lease:
    """A lease held through a `Client.hold` stream.

    `token` is the fencing token: send it with every write to what the lease protects.
    `lost` is a `threading.Event` set when the lease ends other than by `release()`:
    revoked, lost by the server, the server shutting down (on a store that dies with
    it), a refused re-attach, or the deadline rule (no confirmed answer before the
    deadline, even if the stream is silent or is being re-attached). `check()` raises
    `LeaseLost` once the lease is over; `time_left()` is how long the holder may still
    act.

    A broken stream does not end the lease: the client re-attaches it (same token)
    through another server of the same store, or the same server, before the deadline
    (`reattaching` is True meanwhile, `reattachments` counts the times it did, `url` is
    the server holding it). The holder sees nothing of it: `lost` stays unset and
    `check()` passes while the deadline has not passed.

    A lease nobody references any more is released (as the Rust `Lease` is on drop):
    the background threads hold only the machinery, never the `Lease` itself.
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

    @property
    def url(self) -> str:
        """The URL of the server whose stream holds the lease (while re-attaching, the
        one whose stream broke)."""
        return self._holder.url

    @property
    def reattaching(self) -> bool:
        """Whether the lease's stream broke and the client is re-attaching it."""
        return self._holder.state.reattaching

    @property
    def reattachments(self) -> int:
        """How many times the lease was re-attached on a new stream."""
        return self._holder.state.reattachments

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

        While the lease is being re-attached, the release waits for it: once
        re-attached, the lease is released on its new stream; if the re-attach fails
        (refused, or the deadline passes), the lease is lost, as above.

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


class _Stream:
    """One `Hold` stream of a lease: its call, the queue its requests are taken from,
    and the thread that reads its answers. A lease has one current stream at a time;
    while it is re-attached, attempts are streams that become current once granted."""

    def __init__(self, endpoint: _Endpoint, resume: bool):
        self.endpoint = endpoint
        self.resume = resume
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        #: Set once the first answer (or the end of the call) was read.
        self.first = threading.Event()
        #: What ended the call before a first answer: a grpc.RpcError or a LeasesError.
        self.error: BaseException | None = None
        #: When its `acquire` was taken to be sent (the deadline rule's instant).
        self.sent_at: float | None = None
        self.call = None
        self.reader: threading.Thread | None = None
        # Both under the holder's lock: a re-attach attempt is either taken over as the
        # current stream (adopted) or given up (abandoned), never both.
        self.adopted = False
        self.abandoned = False

    def request_iterator(self):
        while True:
            item = self.requests.get()
            if item is _END_OF_REQUESTS:
                return
            yield item

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()
        self.requests.put(_END_OF_REQUESTS)


class _Holder:
    """The machinery of one `Lease`: its current stream, the keeper thread (heartbeats
    and the deadline), the re-attaching thread, and the state. It holds the `Lease`
    only weakly (for `on_lost`), so that a dropped `Lease` is garbage collected, and
    released by its finalizer. `state.changed` (a re-entrant lock) guards which stream
    is current, together with the state."""

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
        self._lock = self.state.changed
        self._stream: _Stream | None = None
        self._attempt: _Stream | None = None
        self.url = client.url
        self._release_sent = False
        self._release_wanted = False
        self._released = threading.Event()
        self._handed_over = False
        self._keeper: threading.Thread | None = None
        self._reattacher: threading.Thread | None = None

    @property
    def _reader(self) -> threading.Thread | None:
        stream = self._stream
        return stream.reader if stream is not None else None

    def release(self, wait: bool) -> None:
        """Ends the lease as released and sends `release`, unless it is over already
        (its deadline passed: then it is lost). While the lease is being re-attached,
        the release is carried out once it is (a loss if it is not). Only the caller
        whose end succeeded sends and closes; with `wait`, the others wait for it to
        finish."""
        self.expire_if_due()
        state = self.state
        with self._lock:
            if state.reason is None and state.reattaching:
                # The stream that re-attaches the lease sends it (see `_adopt`).
                self._release_wanted = True
                if not wait:
                    return
                state.changed.wait_for(
                    lambda: state.reason is not None or not state.reattaching,
                    state.time_left() + self._client.timeout,
                )
            stream = self._send_release()
        if stream is not None:
            if not wait:
                # Dropped: the reader closes the call when the server ends it.
                return
            try:
                if stream.reader is not None and stream.reader is not threading.current_thread():
                    stream.reader.join(self._client.timeout)
            finally:
                self._close()
                self._released.set()
        elif state.reason is Reason.RELEASED:
            if wait:
                self._released.wait(self._client.timeout)
        else:
            self._close()

    def _send_release(self) -> "_Stream | None":
        """With the lock held: ends the lease as released and sends `release` on the
        current stream; that stream if this call did, else None."""
        stream = self._stream
        if stream is None or not self.state.end(Reason.RELEASED, "released by the holder"):
            return None
        self._release_sent = True
        stream.requests.put(_core.RELEASE)
        stream.requests.put(_END_OF_REQUESTS)
        return stream

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

    def _open(self, endpoint: _Endpoint, request, resume: bool) -> _Stream:
        """Opens a `Hold` stream through `endpoint`, sends `request` and starts its
        reader. The instant is taken before the request is handed to gRPC."""
        stream = _Stream(endpoint, resume)
        # No gRPC deadline on the stream: it lives as long as the lease.
        stream.call = endpoint.stub.Hold(
            stream.request_iterator(), metadata=self._client._metadata
        )
        stream.sent_at = clock()
        if not resume:
            self.state.acquire_sent(stream.sent_at)
        stream.requests.put(request)
        stream.reader = threading.Thread(
            target=self._read, args=(stream,), name=f"leases-read {self.key}", daemon=True
        )
        stream.reader.start()
        return stream

    def acquire(self) -> None:
        """Acquires the key through the first server that answers; hands the lease
        over (and starts the keeper) once its deadline is known."""
        client = self._client
        waited = self._wait is not None
        bound = (self._wait or 0.0) + client.timeout
        request = _core.acquire_request(self.key, self.ttl, self.metadata, self._wait)
        error: BaseException | None = None
        for index in _core.endpoint_order(len(client._endpoints), client._preferred):
            endpoint = client._endpoints[index]
            with self._lock:
                if self.state.reason is not None:  # abandoned meanwhile
                    break
                stream = self._stream = self._open(endpoint, request, resume=False)
                stream.adopted = True
                self.url = endpoint.url
            stream.first.wait(bound)
            with self._lock:
                if self.state.answers > 0:  # granted (only the current stream's count)
                    error = None
                elif not stream.first.is_set():
                    error = Unavailable(f"no answer to acquire {self.key} within {bound:g}s")
                else:
                    error = stream.error or Unavailable("the stream ended before a grant")
                if error is None:
                    client._preferred = index
                    break
                if isinstance(error, grpc.RpcError):
                    error = from_rpc_error(error, waited=waited)
                if not isinstance(error, Unavailable):
                    break
                # Try the next server; this stream is given up (reset).
                stream.abandoned = True
                self._stream = None
            stream.cancel()
        if error is not None:
            raise error
        state = self.state
        if waited and state.reason is None:
            # The grant may have come long after the acquire was sent, so it has no
            # deadline yet: count from a heartbeat's answer before handing it over, and
            # start the keeper only then.
            with self._lock:
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

    def _read(self, stream: _Stream) -> None:
        """Reads one stream's answers. Only the current stream's answers count; a
        stream that broke, or was given up, is read to its end and ignored."""
        try:
            for answer in stream.call:
                kind = answer.WhichOneof("kind")
                if not stream.first.is_set():
                    self._first(stream, answer)
                    stream.first.set()
                    continue
                with self._lock:
                    if self._stream is not stream:
                        continue
                if kind == "renewed":
                    if self.state.renewed(_core.from_duration(answer.renewed.time_left)):
                        self._after_loss()
                elif kind == "ended" and _core.handed_over(answer.ended):
                    self._broke(stream, answer.ended.message or "handed over", answer.ended)
                elif kind == "ended":
                    reason, message = _core.ended_reason(answer.ended, self._release_sent)
                    self._end(stream, reason, message)
                else:
                    self._end(stream, Reason.BROKEN, f"an unexpected answer: {kind}")
            if stream.first.is_set():
                self._broke(stream, "the stream ended without an `ended` answer")
            else:
                stream.error = Unavailable("the stream ended before an answer")
        except grpc.RpcError as error:
            if not stream.first.is_set():
                stream.error = error
            elif _core.breaks_stream(error):
                self._broke(stream, _core.describe_rpc_error(error))
            else:
                self._end(stream, Reason.BROKEN, _core.describe_rpc_error(error))
        except Exception as error:  # a bug of ours must still end the lease
            if not stream.first.is_set():
                stream.error = error
            self._end(stream, Reason.BROKEN, _core.describe_rpc_error(error))
        finally:
            stream.first.set()
            if self._release_sent and self._stream is stream:
                self._close()
                self._released.set()

    def _first(self, stream: _Stream, answer) -> None:
        """The first answer of a stream: the grant of the lease, or of its re-attach."""
        kind = answer.WhichOneof("kind")
        if kind != "granted":
            stream.error = Unavailable(f"the stream's first answer was not a grant: {kind}")
            return
        token = answer.granted.token
        time_left = _core.from_duration(answer.granted.time_left)
        if not stream.resume:
            with self._lock:
                if self._stream is stream:
                    self.state.granted(token, time_left, waited=self._wait is not None)
                    return
            stream.error = Unavailable("granted after the client gave up the stream")
            stream.cancel()
            return
        self._adopt(stream, token, time_left)

    def _adopt(self, stream: _Stream, token: int, time_left: float) -> None:
        """A re-attach attempt was granted: it becomes the lease's stream, unless it
        was given up meanwhile or its answer ends the lease (another token, or past its
        deadline). A release asked for meanwhile is sent on it now."""
        ended = False
        with self._lock:
            if stream.abandoned or self.state.reason is not None:
                taken = False
            else:
                ended = self.state.resumed(token, stream.sent_at, time_left)
                taken = self.state.reason is None
            if taken:
                stream.adopted = True
                self._stream = stream
                self._attempt = None
                self.url = stream.endpoint.url
                self._client._preferred = stream.endpoint.index
                if self._release_wanted:
                    self._send_release()
            else:
                stream.abandoned = True
        if not taken:
            stream.cancel()
        if ended:
            self._after_loss()

    def _end(self, stream: _Stream, reason: Reason, message: str) -> None:
        """The current stream ended the lease (any `ended` but HANDED_OVER, a status)."""
        with self._lock:
            if self._stream is not stream:
                return
            ended = self.state.end(reason, message)
        if ended:
            self._after_loss()

    def _broke(self, stream: _Stream, message: str, ended=None) -> None:
        """The current stream broke (a transport error, UNAVAILABLE, its end without
        `ended`, `ended { HANDED_OVER }`): re-attach the lease, if that is on, the
        lease was handed to its holder and it is not being released."""
        client = self._client
        with self._lock:
            if self._stream is not stream or self.state.reason is not None:
                return
            if (
                not client.reattach
                or client._closed
                or not self._handed_over
                or self._release_sent
            ):
                if ended is not None:
                    reason, message = _core.ended_reason(ended, self._release_sent)
                else:
                    reason = Reason.BROKEN
                lost = self.state.end(reason, message)
            else:
                lost = False
                self._stream = None
                self.state.broke()
                self._reattacher = threading.Thread(
                    target=self._reattach,
                    args=(stream.endpoint.index,),
                    name=f"leases-reattach {self.key}",
                    daemon=True,
                )
                self._reattacher.start()
        stream.cancel()
        if lost:
            self._after_loss()

    def _reattach(self, broken: int) -> None:
        """Re-attaches the lease (`acquire` with `resume`), through the next server
        first, then each in turn (the broken one too), with a short backoff, until a
        grant (the reader adopts it), a refusal (lost at once) or the deadline (the
        keeper ends the lease then)."""
        client, state = self._client, self.state
        endpoints = client._endpoints
        request = _core.resume_request(self.key, self.ttl, self.metadata, state.token)
        backoff = _core.BACKOFF_FIRST
        attempt = 0
        while True:
            with self._lock:
                if state.reason is not None or not state.reattaching:
                    return
                remaining = state.deadline - clock()
                if remaining <= 0:
                    break
                endpoint = endpoints[(broken + 1 + attempt) % len(endpoints)]
                try:
                    stream = self._attempt = self._open(endpoint, request, resume=True)
                except Exception as error:  # a closed channel
                    lost = state.end(Reason.BROKEN, f"cannot re-attach: {error!r}")
                    stream = None
            if stream is None:
                if lost:
                    self._after_loss()
                return
            stream.first.wait(_core.attempt_bound(self.ttl, client.timeout, remaining))
            with self._lock:
                if stream.adopted:
                    return
                stream.abandoned = True
                if self._attempt is stream:
                    self._attempt = None
            stream.cancel()
            error = stream.error
            if isinstance(error, grpc.RpcError) and error.code() == _core.REFUSED:
                with self._lock:
                    lost = state.end(
                        Reason.LOST, f"the lease could not be re-attached: {error.details()}"
                    )
                if lost:
                    self._after_loss()
                return
            attempt += 1
            with self._lock:
                state.changed.wait_for(lambda: state.reason is not None, backoff)
            backoff = min(backoff * 2, _core.BACKOFF_MAX)
        self.expire_if_due()

    def _heartbeat(self) -> None:
        """With the lock held: a heartbeat on the current stream. The instant is taken
        before the request is handed to gRPC: never later than the moment it is sent,
        so the deadline counted from it is never too late."""
        stream = self._stream
        if stream is not None and self.state.heartbeat_sent(clock()):
            stream.requests.put(_core.HEARTBEAT)

    def _keep(self) -> None:
        """Heartbeats every TTL/4 (none while re-attaching); ends the lease at its
        deadline."""
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
                if state.reattaching:
                    state.changed.wait(state.deadline - now)
                    continue
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
        with self._lock:
            streams = [s for s in (self._stream, self._attempt) if s is not None]
        for stream in streams:
            stream.cancel()
