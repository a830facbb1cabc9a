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
from ._proto import leases_pb2, leases_pb2_grpc
from ._sync import Seconds

#: Background tasks (the release of a dropped lease, coroutine `on_lost` callbacks):
#: asyncio holds tasks only weakly, so they are kept here until they are done.
_tasks: set[asyncio.Task] = set()


def _spawn(coroutine) -> asyncio.Task:
    task = asyncio.ensure_future(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


class AsyncClient:
    """The async twin of `Client`: the same arguments, and the same calls to await.
    Create and use it inside one running event loop.

    A lease is tied to the server it was acquired through: re-attaching it through
    another server of the same store is not implemented yet.
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
            self._channel = grpc.aio.secure_channel(
                target.address, credentials, options=_core.CHANNEL_OPTIONS
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                target.address, options=_core.CHANNEL_OPTIONS
            )
        self._stub = leases_pb2_grpc.LeasesStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

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
            self._stub.Revoke, leases_pb2.KeyRequest(key=_core.check_key(key))
        )
        return answer.revoked

    async def info(self, key: str) -> LeaseInfo | None:
        answer = await self._unary(
            self._stub.Info, leases_pb2.KeyRequest(key=_core.check_key(key))
        )
        return LeaseInfo.of(answer.lease) if answer.HasField("lease") else None

    async def list(self, prefix: str = "", limit: int = 0) -> list[LeaseInfo]:
        answer = await self._unary(
            self._stub.List, leases_pb2.ListRequest(prefix=prefix, limit=limit)
        )
        return [LeaseInfo.of(lease) for lease in answer.leases]

    async def _unary(self, method, request):
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None


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
    A lease is tied to the server it was acquired through. A dropped `AsyncLease` is
    released: the background tasks hold only its machinery."""

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
        only closes the stream. Never raises `LeaseLost`, nor does `async with`'s exit."""
        await self._holder.release()

    def __repr__(self) -> str:
        state = self.reason.value if self.reason else "held"
        return f"<AsyncLease {self.key} token={self.token} {state}>"


class _AsyncHolder:
    """The machinery of one `AsyncLease`; holds the lease only weakly."""

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
        self._call = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release_sent = False
        self._released = asyncio.Event()
        self._handed_over = False
        self.reader: asyncio.Task | None = None
        self.keeper: asyncio.Task | None = None

    async def release(self) -> None:
        self.expire_if_due()
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
        if not self._release_sent and self._call is not None:
            self._release_sent = True
            try:
                await self._call.write(_core.RELEASE)
                await self._call.done_writing()
                if self.reader is not None:
                    await asyncio.wait_for(asyncio.shield(self.reader), self._client.timeout)
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
        if self.state.end(Reason.RELEASED, "released: the lease was dropped"):
            self._changed.set()
            _spawn(self._send_release()).add_done_callback(lambda _: self._released.set())

    def abandon(self, message: str) -> None:
        """`hold()` failed or was cancelled: end the lease (nobody was handed it, so
        `on_lost` does not run), reset the stream and stop the tasks, without awaiting."""
        self.state.end(Reason.BROKEN, message)
        self._changed.set()
        self._cancel_now()

    def _cancel_now(self) -> None:
        if self._call is not None:
            self._call.cancel()
        for task in (self.keeper, self.reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                _tasks.add(task)
                task.add_done_callback(_tasks.discard)

    # --- the machinery

    async def acquire(self) -> None:
        client = self._client
        self._loop = asyncio.get_running_loop()
        # No gRPC deadline on the stream: it lives as long as the lease.
        self._call = client._stub.Hold(metadata=client._metadata)
        waited = self._wait is not None
        bound = (self._wait or 0.0) + client.timeout
        try:
            self.state.acquire_sent(clock())
            try:
                await self._call.write(
                    _core.acquire_request(self.key, self.ttl, self.metadata, self._wait)
                )
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The server may end the call before it reads anything (a refused
                # token): the write then fails with a status of its own ("Internal error
                # from Core"), and the call's own status is the one that tells why.
                raise await self._call_status() from None
            first = await asyncio.wait_for(self._call.read(), bound)
        except asyncio.TimeoutError:
            raise Unavailable(f"no answer to acquire {self.key} within {bound:g}s") from None
        except grpc.RpcError as error:
            raise from_rpc_error(error, waited=waited) from None
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "granted":
            raise Unavailable(f"the stream ended before a grant: {first}")
        state = self.state
        state.granted(
            first.granted.token, _core.from_duration(first.granted.time_left), waited=waited
        )
        self.reader = asyncio.create_task(self._read())
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

    async def _call_status(self) -> grpc.aio.AioRpcError:
        """The call's final status, as an error (waits for it, within the timeout)."""
        call = self._call
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

    async def _read(self) -> None:
        try:
            while True:
                answer = await self._call.read()
                if answer is grpc.aio.EOF:
                    self._end(Reason.BROKEN, "the stream ended without an `ended` answer")
                    return
                kind = answer.WhichOneof("kind")
                if kind == "renewed":
                    if self.state.renewed(_core.from_duration(answer.renewed.time_left)):
                        self._after_loss()
                    self._changed.set()
                elif kind == "ended":
                    reason, message = _core.ended_reason(answer.ended, self._release_sent)
                    self._end(reason, message)
                else:
                    self._end(Reason.BROKEN, f"an unexpected answer: {kind}")
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as error:
            self._end(Reason.BROKEN, _core.describe_rpc_error(error))
        except Exception as error:  # a bug of ours must still end the lease
            self._end(Reason.BROKEN, _core.describe_rpc_error(error))

    async def _heartbeat(self) -> None:
        # The instant is taken before the request is handed to gRPC: never later than
        # the moment it is sent.
        if self.state.heartbeat_sent(clock()):
            try:
                await self._call.write(_core.HEARTBEAT)
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The call has ended: the reader ends the lease with the call's own
                # status, which says why (the write's error does not). The deadline
                # still holds meanwhile.
                pass

    async def _keep(self) -> None:
        """Heartbeats every TTL/4; ends the lease at its deadline."""
        interval = self.ttl / 4
        state = self.state
        next_beat = clock() + interval
        while state.reason is None:
            now = clock()
            if now >= state.deadline:
                break
            if now < next_beat:
                self._changed.clear()
                try:
                    await asyncio.wait_for(
                        self._changed.wait(), min(next_beat, state.deadline) - now
                    )
                except asyncio.TimeoutError:
                    pass
                continue
            await self._heartbeat()
            next_beat = max(next_beat + interval, clock())
        self.expire_if_due()

    def expire_if_due(self) -> None:
        if self.state.expire_if_due():
            self._after_loss()

    def _end(self, reason: Reason, message: str) -> None:
        if self.state.end(reason, message):
            self._after_loss()
        self._changed.set()

    def _after_loss(self) -> None:
        reason = self.state.reason
        if reason is Reason.RELEASED:
            return
        self.lost.set()
        self._changed.set()
        if self._call is not None:
            # No release after a loss: the stream is reset, and the server keeps the
            # key until the time it promised has run out.
            self._call.cancel()
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
        if self._call is not None:
            self._call.cancel()
        for task in (self.keeper, self.reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
