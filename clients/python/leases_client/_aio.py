"""The async client (grpc.aio): tasks for the stream's answers and for the heartbeats."""

from __future__ import annotations

import asyncio
import inspect
from typing import Callable

import grpc
import grpc.aio

from . import _core
from ._core import LeaseInfo, State, clock
from ._errors import Reason, Unavailable, from_rpc_error
from ._proto import leases_pb2, leases_pb2_grpc
from ._sync import Seconds


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
        plain function or a coroutine function."""
        lease = AsyncLease(
            self,
            _core.check_key(key),
            _core.check_ttl(_core.seconds(ttl, "ttl")),
            _core.check_metadata(metadata),
            _core.seconds(wait, "wait"),
            on_lost,
        )
        return _Holding(lease)

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
        await self._lease._acquire()
        return self._lease

    async def __aenter__(self) -> "AsyncLease":
        return await self._acquired()

    async def __aexit__(self, *exc) -> None:
        await self._lease.release()


class AsyncLease:
    """The async twin of `Lease`: `lost` is an `asyncio.Event`; `release()` is awaited.
    A lease is tied to the server it was acquired through."""

    def __init__(self, client, key, ttl, metadata, wait, on_lost):
        self.key = key
        self.ttl = ttl
        self.metadata = metadata
        self.lost = asyncio.Event()
        self._client = client
        self._wait = wait
        self._on_lost = on_lost
        self._state = State(ttl)
        self._changed = asyncio.Event()
        self._call = None
        self._release_sent = False
        self._reader: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None

    token = property(lambda self: self._state.token)
    reason = property(lambda self: self._state.reason, doc="Why it ended, or None.")
    message = property(lambda self: self._state.message)
    deadline = property(lambda self: self._state.deadline, doc="On time.monotonic().")
    acquired_at = property(lambda self: self._state.acquired_at)
    ended_at = property(lambda self: self._state.ended_at)

    def time_left(self) -> float:
        self._expire_if_due()
        return self._state.time_left()

    def check(self) -> None:
        """Raises `LeaseLost` (with the reason) if the lease is over."""
        self._expire_if_due()
        self._state.check()

    async def release(self) -> None:
        """As `Lease.release`: after a loss it only closes the stream."""
        send = self._state.end(Reason.RELEASED, "released by the holder")
        self._changed.set()
        if send and not self._release_sent and self._call is not None:
            self._release_sent = True
            try:
                await self._call.write(_core.RELEASE)
                await self._call.done_writing()
                if self._reader is not None:
                    await asyncio.wait_for(asyncio.shield(self._reader), self._client.timeout)
            except (grpc.RpcError, asyncio.InvalidStateError, asyncio.TimeoutError):
                pass
        await self._close()

    def __repr__(self) -> str:
        state = self.reason.value if self.reason else "held"
        return f"<AsyncLease {self.key} token={self.token} {state}>"

    # --- the machinery

    async def _acquire(self) -> None:
        client = self._client
        # No gRPC deadline on the stream: it lives as long as the lease.
        self._call = client._stub.Hold(metadata=client._metadata)
        waited = self._wait is not None
        bound = (self._wait or 0.0) + client.timeout
        try:
            self._state.acquire_sent(clock())
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
            self._call.cancel()
            raise Unavailable(f"no answer to acquire {self.key} within {bound:g}s") from None
        except grpc.RpcError as error:
            self._call.cancel()
            raise from_rpc_error(error, waited=waited) from None
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "granted":
            self._call.cancel()
            raise Unavailable(f"the stream ended before a grant: {first}")
        self._state.granted(first.granted.token, _core.from_duration(first.granted.time_left))
        self._reader = asyncio.create_task(self._read())
        self._keeper = asyncio.create_task(self._keep())
        if waited and self._state.reason is None:
            # The grant may have come long after the acquire was sent: count from a
            # heartbeat's answer before handing the lease over.
            await self._heartbeat()
            try:
                async with asyncio.timeout(client.timeout):
                    while self._state.answers < 2 and self._state.reason is None:
                        self._changed.clear()
                        await self._changed.wait()
            except TimeoutError:
                self._end(Reason.BROKEN, "no answer to the first heartbeat in time")
        if self._state.reason is not None:
            await self._close()
            raise self._state.lost_error()

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
                    if self._state.renewed(_core.from_duration(answer.renewed.time_left)):
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
        if self._state.heartbeat_sent(clock()):
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
        state = self._state
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
        self._expire_if_due()

    def _expire_if_due(self) -> None:
        if self._state.expire_if_due():
            self._after_loss()

    def _end(self, reason: Reason, message: str) -> None:
        if self._state.end(reason, message):
            self._after_loss()
        self._changed.set()

    def _after_loss(self) -> None:
        reason = self._state.reason
        if reason is Reason.RELEASED:
            return
        self.lost.set()
        self._changed.set()
        if self._call is not None:
            # No release after a loss: the stream is reset, and the server keeps the
            # key until the time it promised has run out.
            self._call.cancel()
        if self._on_lost is not None:
            try:
                result = self._on_lost(self)
                if inspect.isawaitable(result):
                    asyncio.ensure_future(result)
            except Exception:
                import traceback

                traceback.print_exc()

    async def _close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        for task in (self._keeper, self._reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
