"""The async client (grpc.aio): tasks for the stream's answers and for the heartbeats."""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Callable

import grpc
import grpc.aio

from . import _core
from ._core import LeaseInfo, State, clock
from ._errors import Reason, Unavailable, from_rpc_error
from ._proto import leases_pb2
from ._sync import _FAIL_OVER, _REVOKE_FAIL_OVER, Seconds, _Endpoint, _endpoints

#: Background tasks (the release of a dropped lease, coroutine `on_lost` callbacks):
#: asyncio holds tasks only weakly, so they are kept here until they are done.
_tasks: set[asyncio.Task] = set()


def _spawn(coroutine) -> asyncio.Task:
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


class AsyncClient:
    """The async twin of `Client`: the same arguments (several servers, `reattach`),
    and the same calls to await. Create and use it inside one running event loop.
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
        self._endpoints = _endpoints(list(self.urls), ca, aio=True)
        self._preferred = 0
        self._closed = False

    @property
    def url(self) -> str:
        """The URL of the server the client tries first: the last one that answered."""
        return self.urls[self._preferred]

    async def close(self) -> None:
        """Closes the connections; leases still held through them break (and are not
        re-attached: they end as `BROKEN`)."""
        self._closed = True
        for endpoint in self._endpoints:
            await endpoint.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def hold(
        self,
        key: str,
        ttl: Seconds,
        metadata: bytes | str | None = None,
        wait: Seconds | None = None,
        on_lost: Callable[["AsyncLease"], object] | None = None,
    ) -> "_Holding":
        """`async with client.hold(key, ttl=10) as lease:`, or `lease = await
        client.hold(...)` and `await lease.release()` later. `on_lost(lease)` may be a
        plain function or a coroutine function; it never runs for a lease `hold` did
        not return. An `AsyncLease` dropped without `release()` is released when it is
        garbage collected (while its event loop runs)."""
        holder = _AsyncHolder(
            self,
            _core.check_key(key),
            _core.check_ttl(_core.seconds(ttl, "ttl")),
            _core.check_metadata(metadata),
            _core.seconds(wait, "wait"),
            on_lost,
        )
        return _Holding(AsyncLease(holder))

    async def revoke(self, key: str) -> bool:
        answer = await self._unary(
            "Revoke", leases_pb2.KeyRequest(key=_core.check_key(key)), _REVOKE_FAIL_OVER
        )
        return answer.revoked

    async def info(self, key: str) -> LeaseInfo | None:
        answer = await self._unary(
            "Info", leases_pb2.KeyRequest(key=_core.check_key(key))
        )
        return LeaseInfo.of(answer.lease) if answer.HasField("lease") else None

    async def list(self, prefix: str = "", limit: int = 0) -> list[LeaseInfo]:
        answer = await self._unary(
            "List", leases_pb2.ListRequest(prefix=prefix, limit=limit)
        )
        return [LeaseInfo.of(lease) for lease in answer.leases]

    async def _unary(self, method: str, request, fail_over=_FAIL_OVER):
        last = None
        for index in _core.endpoint_order(len(self._endpoints), self._preferred):
            call = getattr(self._endpoints[index].stub, method)
            try:
                answer = await call(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                if error.code() in fail_over:
                    last = error
                    continue
                raise from_rpc_error(error) from None
            self._preferred = index
            return answer
        raise from_rpc_error(last) from None


class _Holding:
    """What `AsyncClient.hold` returns: awaitable, and an async context manager."""

    def __init__(self, lease: "AsyncLease"):
        self._lease = lease

    def __await__(self):
        return self._acquired().__await__()

    async def _acquired(self) -> "AsyncLease":
        lease = self._lease
        try:
            await lease._holder.acquire()
        except BaseException:
            # Failed, or cancelled after the stream opened (while waiting for the grant
            # or its confirmation): nobody has the lease, so end it and reset the
            # stream at once, without awaiting (a cancelled task may not await again).
            lease._finalizer.detach()
            lease._holder.abandon("hold() did not hand the lease over")
            raise
        return lease

    async def __aenter__(self) -> "AsyncLease":
        return await self._acquired()

    async def __aexit__(self, *exc) -> None:
        await self._lease.release()


class AsyncLease:
    """The async twin of `Lease`: `lost` is an `asyncio.Event`; `release()` is awaited.
    A broken stream is re-attached as `Lease` says (`reattaching`, `reattachments`,
    `url`). A dropped `AsyncLease` is released: the background tasks hold only its
    machinery."""

    def __init__(self, holder: "_AsyncHolder"):
        self._holder = holder
        self.key = holder.key
        self.ttl = holder.ttl
        self.metadata = holder.metadata
        self.lost = holder.lost
        holder.owner = weakref.ref(self)
        self._finalizer = weakref.finalize(self, holder.drop)

    token = property(lambda self: self._holder.state.token)
    reason = property(lambda self: self._holder.state.reason, doc="Why it ended, or None.")
    message = property(lambda self: self._holder.state.message)
    deadline = property(lambda self: self._holder.state.deadline, doc="On time.monotonic().")
    acquired_at = property(lambda self: self._holder.state.acquired_at)
    ended_at = property(lambda self: self._holder.state.ended_at)
    url = property(lambda self: self._holder.url, doc="The server holding the lease.")
    reattaching = property(lambda self: self._holder.state.reattaching)
    reattachments = property(lambda self: self._holder.state.reattachments)
    _reader = property(lambda self: self._holder.reader)
    _keeper = property(lambda self: self._holder.keeper)

    def time_left(self) -> float:
        self._holder.expire_if_due()
        return self._holder.state.time_left()

    def check(self) -> None:
        """Raises `LeaseLost` (with the reason) if the lease is over."""
        self._holder.expire_if_due()
        self._holder.state.check()

    async def release(self) -> None:
        """As `Lease.release`: if the deadline has passed (a blocked event loop), the
        lease is lost, not released (`lost` is set, `on_lost` runs); after a loss it
        only closes the stream. While the lease is being re-attached, it waits for
        that: released once re-attached, lost if the re-attach fails. Never raises
        `LeaseLost`, nor does `async with`'s exit."""
        await self._holder.release()

    def __repr__(self) -> str:
        state = self.reason.value if self.reason else "held"
        return f"<AsyncLease {self.key} token={self.token} {state}>"


class _AsyncStream:
    """One `Hold` stream of a lease: its call and the task that reads its answers."""

    def __init__(self, endpoint: _Endpoint, call):
        self.endpoint = endpoint
        self.call = call
        #: When its `acquire` was taken to be sent (the deadline rule's instant).
        self.sent_at: float | None = None
        self.reader: asyncio.Task | None = None


class _AsyncHolder:
    """The machinery of one `AsyncLease`: its current stream, the keeper task
    (heartbeats and the deadline), the re-attaching task; holds the lease only weakly."""

    def __init__(self, client, key, ttl, metadata, wait, on_lost):
        self.key = key
        self.ttl = ttl
        self.metadata = metadata
        self.lost = asyncio.Event()
        self.owner: weakref.ref | None = None
        self._client = client
        self._wait = wait
        self._on_lost = on_lost
        self.state = State(ttl)
        self._changed = asyncio.Event()
        self._stream: _AsyncStream | None = None
        self._attempt: _AsyncStream | None = None
        self.url = client.url
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release_sent = False
        self._release_wanted = False
        self._released = asyncio.Event()
        self._handed_over = False
        self.reader: asyncio.Task | None = None
        self.keeper: asyncio.Task | None = None
        self.reattacher: asyncio.Task | None = None

    async def release(self) -> None:
        self.expire_if_due()
        state = self.state
        if state.reason is None and state.reattaching:
            # Carried out once re-attached (see `_adopt`), or a loss if it is not; the
            # keeper ends the lease at its deadline at the latest.
            self._release_wanted = True
            while state.reason is None and state.reattaching:
                self._changed.clear()
                await self._changed.wait()
        send = self.state.end(Reason.RELEASED, "released by the holder")
        self._changed.set()
        if send:
            try:
                await self._send_release()
            finally:
                self._released.set()
        elif self.state.reason is Reason.RELEASED:
            try:
                await asyncio.wait_for(self._released.wait(), self._client.timeout)
            except asyncio.TimeoutError:
                pass
        else:
            await self._close()

    async def _send_release(self) -> None:
        stream = self._stream
        if not self._release_sent and stream is not None:
            self._release_sent = True
            try:
                await stream.call.write(_core.RELEASE)
                await stream.call.done_writing()
                if stream.reader is not None:
                    await asyncio.wait_for(asyncio.shield(stream.reader), self._client.timeout)
            except (grpc.RpcError, asyncio.InvalidStateError, asyncio.TimeoutError):
                pass
        await self._close()

    def drop(self) -> None:
        """The `AsyncLease` was garbage collected: release it, on its event loop (the
        collection may run in another thread)."""
        try:
            loop = self._loop
            if loop is None or loop.is_closed():
                self._cancel_now()
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._release_dropped()
            else:
                loop.call_soon_threadsafe(self._release_dropped)
        except Exception:  # a finalizer must not raise (a loop closed meanwhile)
            try:
                self._cancel_now()
            except Exception:
                pass

    def _release_dropped(self) -> None:
        self.expire_if_due()
        if self.state.reason is None and self.state.reattaching:
            self._release_wanted = True  # released once re-attached (see `_adopt`)
            return
        self._release_in_background("released: the lease was dropped")

    def _release_in_background(self, message: str) -> None:
        if self.state.end(Reason.RELEASED, message):
            self._changed.set()
            _spawn(self._send_release()).add_done_callback(lambda _: self._released.set())

    def abandon(self, message: str) -> None:
        """`hold()` failed or was cancelled: end the lease (nobody was handed it, so
        `on_lost` does not run), reset the stream and stop the tasks, without awaiting."""
        self.state.end(Reason.BROKEN, message)
        self._changed.set()
        self._cancel_now()

    def _calls(self) -> list:
        return [s.call for s in (self._stream, self._attempt) if s is not None]

    def _tasks(self) -> list[asyncio.Task]:
        return [t for t in (self.keeper, self.reader, self.reattacher) if t is not None]

    def _cancel_now(self) -> None:
        for call in self._calls():
            call.cancel()
        for task in self._tasks():
            if task is not asyncio.current_task():
                task.cancel()
                _tasks.add(task)
                task.add_done_callback(_tasks.discard)

    # --- the machinery

    async def _open(self, endpoint: _Endpoint, request, bound: float, resume: bool):
        """Opens a `Hold` stream through `endpoint` and sends `request`; returns the
        stream and its first answer, a grant. Raises the call's grpc.RpcError, or
        `Unavailable` if no grant came within `bound`; the call is reset then."""
        # No gRPC deadline on the stream: it lives as long as the lease.
        call = endpoint.stub.Hold(metadata=self._client._metadata)
        stream = self._attempt = _AsyncStream(endpoint, call)
        try:
            try:
                async with asyncio.timeout(bound):
                    # The instant is taken before the request is handed to gRPC.
                    stream.sent_at = clock()
                    if not resume:
                        self.state.acquire_sent(stream.sent_at)
                    # The server answers a refused call (a bad token) with its status
                    # at once: wait for its first headers, so that a write racing
                    # that end cannot hide its status behind grpcio's own
                    # ("Internal error from Core", seen 3 runs in 12).
                    await call.initial_metadata()
                    if call.done():
                        raise await self._call_status(call)
                    try:
                        await call.write(request)
                    except (grpc.RpcError, asyncio.InvalidStateError):
                        # The server may end the call before it reads anything (a
                        # refused token): the write then fails with a status of its own
                        # ("Internal error from Core"), and the call's own status is the
                        # one that tells why.
                        raise await self._call_status(call) from None
                    first = await call.read()
            except TimeoutError:
                raise Unavailable(f"no answer to acquire {self.key} within {bound:g}s") from None
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "granted":
                raise Unavailable(f"the stream ended before a grant: {first}")
        except BaseException:
            call.cancel()
            if self._attempt is stream:
                self._attempt = None
            raise
        return stream, first

    async def acquire(self) -> None:
        """Acquires the key through the first server that answers; hands the lease
        over (and starts the keeper) once its deadline is known."""
        client = self._client
        self._loop = asyncio.get_running_loop()
        waited = self._wait is not None
        bound = (self._wait or 0.0) + client.timeout
        request = _core.acquire_request(self.key, self.ttl, self.metadata, self._wait)
        error: BaseException | None = None
        for index in _core.endpoint_order(len(client._endpoints), client._preferred):
            try:
                stream, first = await self._open(
                    client._endpoints[index], request, bound, resume=False
                )
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error, waited=waited)
            except Unavailable as unavailable:
                error = unavailable
            else:
                error = None
                client._preferred = index
                break
            if not isinstance(error, Unavailable):
                break
        if error is not None:
            raise error
        self._stream, self._attempt = stream, None
        self.url = stream.endpoint.url
        state = self.state
        state.granted(
            first.granted.token, _core.from_duration(first.granted.time_left), waited=waited
        )
        stream.reader = self.reader = asyncio.create_task(self._read(stream))
        if waited and state.reason is None:
            # The grant may have come long after the acquire was sent, so it has no
            # deadline yet: count from a heartbeat's answer before handing the lease
            # over, and start the keeper only then.
            await self._heartbeat()
            try:
                async with asyncio.timeout(client.timeout):
                    while state.answers < 2 and state.reason is None:
                        self._changed.clear()
                        await self._changed.wait()
            except TimeoutError:
                raise Unavailable(
                    f"no answer to the heartbeat confirming {self.key} in time"
                ) from None
        self.expire_if_due()
        with state.changed:
            if state.reason is None:
                self._handed_over = True
        if not self._handed_over:
            raise state.lost_error()
        self.keeper = asyncio.create_task(self._keep())

    async def _call_status(self, call) -> grpc.aio.AioRpcError:
        """The call's final status, as an error (waits for it, within the timeout)."""
        try:
            async with asyncio.timeout(self._client.timeout):
                return grpc.aio.AioRpcError(
                    await call.code(),
                    await call.initial_metadata(),
                    await call.trailing_metadata(),
                    await call.details(),
                )
        except TimeoutError:
            call.cancel()
            return grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "a request could not be sent and the call did not end",
            )

    async def _read(self, stream: _AsyncStream) -> None:
        """Reads the answers of the lease's stream, after its grant."""
        try:
            while True:
                answer = await stream.call.read()
                if answer is grpc.aio.EOF:
                    self._broke(stream, "the stream ended without an `ended` answer")
                    return
                kind = answer.WhichOneof("kind")
                if self._stream is not stream:
                    return
                if kind == "renewed":
                    if self.state.renewed(_core.from_duration(answer.renewed.time_left)):
                        self._after_loss()
                    self._changed.set()
                elif kind == "ended" and _core.handed_over(answer.ended):
                    self._broke(stream, answer.ended.message or "handed over", answer.ended)
                    return
                elif kind == "ended":
                    reason, message = _core.ended_reason(answer.ended, self._release_sent)
                    self._end(stream, reason, message)
                else:
                    self._end(stream, Reason.BROKEN, f"an unexpected answer: {kind}")
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as error:
            if _core.breaks_stream(error):
                self._broke(stream, _core.describe_rpc_error(error))
            else:
                self._end(stream, Reason.BROKEN, _core.describe_rpc_error(error))
        except Exception as error:  # a bug of ours must still end the lease
            self._end(stream, Reason.BROKEN, _core.describe_rpc_error(error))

    def _broke(self, stream: _AsyncStream, message: str, ended=None) -> None:
        """The lease's stream broke (a transport error, UNAVAILABLE, its end without
        `ended`, `ended { HANDED_OVER }`): re-attach the lease, if that is on, the
        lease was handed to its holder and it is not being released."""
        client = self._client
        if self._stream is not stream or self.state.reason is not None:
            return
        if not client.reattach or client._closed or not self._handed_over or self._release_sent:
            reason = _core.ended_reason(ended, self._release_sent)[0] if ended else Reason.BROKEN
            self._end(stream, reason, message)
            return
        self._stream = None
        self.state.broke()
        stream.call.cancel()
        self.reattacher = asyncio.create_task(self._reattach(stream.endpoint.index))
        self._changed.set()

    async def _reattach(self, broken: int) -> None:
        """Re-attaches the lease (`acquire` with `resume`), through the next server
        first, then each in turn (the broken one too), with a short backoff, until a
        grant, a refusal (lost at once) or the deadline (the keeper ends the lease
        then, and cancels this task)."""
        client, state = self._client, self.state
        endpoints = client._endpoints
        request = _core.resume_request(self.key, self.ttl, self.metadata, state.token)
        backoff = _core.BACKOFF_FIRST
        attempt = 0
        while state.reason is None and state.reattaching:
            remaining = state.deadline - clock()
            if remaining <= 0:
                break
            endpoint = endpoints[(broken + 1 + attempt) % len(endpoints)]
            attempt += 1
            bound = _core.attempt_bound(self.ttl, client.timeout, remaining)
            try:
                stream, first = await self._open(endpoint, request, bound, resume=True)
            except grpc.RpcError as error:
                if error.code() == _core.REFUSED:
                    self._end(
                        None, Reason.LOST, f"the lease could not be re-attached: {error.details()}"
                    )
                    return
            except Unavailable:
                pass
            except Exception as error:  # a closed channel
                self._end(None, Reason.BROKEN, f"cannot re-attach: {error!r}")
                return
            else:
                self._adopt(stream, first.granted)
                return
            await asyncio.sleep(max(0.0, min(backoff, state.deadline - clock())))
            backoff = min(backoff * 2, _core.BACKOFF_MAX)
        self.expire_if_due()

    def _adopt(self, stream: _AsyncStream, granted) -> None:
        """A re-attach attempt was granted: it becomes the lease's stream, unless its
        answer ends the lease (another token, or past its deadline). A release asked for
        meanwhile is carried out on it now."""
        self._attempt = None
        time_left = _core.from_duration(granted.time_left)
        ended = self.state.resumed(granted.token, stream.sent_at, time_left)
        if self.state.reason is not None:
            stream.call.cancel()
            if ended:
                self._after_loss()
            self._changed.set()
            return
        self._stream = stream
        self.url = stream.endpoint.url
        self._client._preferred = stream.endpoint.index
        stream.reader = self.reader = asyncio.create_task(self._read(stream))
        self._changed.set()
        if self._release_wanted:
            self._release_in_background("released by the holder")

    async def _heartbeat(self) -> None:
        # The instant is taken before the request is handed to gRPC: never later than
        # the moment it is sent. None while re-attaching.
        stream = self._stream
        if stream is not None and self.state.heartbeat_sent(clock()):
            try:
                await stream.call.write(_core.HEARTBEAT)
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The call has ended: the reader ends the lease (or re-attaches it)
                # with the call's own status, which says why (the write's error does
                # not). The deadline still holds meanwhile.
                pass

    async def _keep(self) -> None:
        """Heartbeats every TTL/4 (none while re-attaching); ends the lease at its
        deadline."""
        interval = self.ttl / 4
        state = self.state
        next_beat = clock() + interval
        while state.reason is None:
            now = clock()
            if now >= state.deadline:
                break
            if state.reattaching or now < next_beat:
                wake = state.deadline if state.reattaching else min(next_beat, state.deadline)
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), wake - now)
                except asyncio.TimeoutError:
                    pass
                continue
            await self._heartbeat()
            next_beat = max(next_beat + interval, clock())
        self.expire_if_due()

    def expire_if_due(self) -> None:
        if self.state.expire_if_due():
            self._after_loss()

    def _end(self, stream: _AsyncStream | None, reason: Reason, message: str) -> None:
        """Ends the lease, if `stream` (None: whichever) is still its stream."""
        if stream is not None and self._stream is not stream:
            return
        if self.state.end(reason, message):
            self._after_loss()
        self._changed.set()

    def _after_loss(self) -> None:
        reason = self.state.reason
        if reason is Reason.RELEASED:
            return
        self.lost.set()
        self._changed.set()
        # No release after a loss: the stream is reset, and the server keeps the key
        # until the time it promised has run out. A re-attach under way stops.
        for call in self._calls():
            call.cancel()
        reattacher = self.reattacher
        if reattacher is not None and reattacher is not asyncio.current_task():
            reattacher.cancel()
        if self._on_lost is None or not self._handed_over:
            return
        lease = self.owner() if self.owner is not None else None
        if lease is None:
            return
        try:
            result = self._on_lost(lease)
            if inspect.isawaitable(result):
                _spawn(result)
        except Exception:
            import traceback

            traceback.print_exc()

    async def _close(self) -> None:
        for call in self._calls():
            call.cancel()
        for task in self._tasks():
            if task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
