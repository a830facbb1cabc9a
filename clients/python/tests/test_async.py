"""The async client (grpc.aio) against a real `leases serve` (started by test.sh)."""

import asyncio
import time
import unittest

import leases_client
from leases_client import Reason

import support


class AsyncTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        support.require_servers(self)
        self.client = leases_client.AsyncClient(support.URL, timeout=10)

    async def asyncTearDown(self):
        await self.client.close()

    async def test_hold_conflict_wait_release(self):
        key = support.unique_key(self)
        async with self.client.hold(key, ttl=2, metadata=b"m") as lease:
            self.assertIsInstance(lease.lost, asyncio.Event)
            self.assertGreater(lease.token, 0)
            info = await self.client.info(key)
            self.assertEqual((info.token, info.metadata), (lease.token, b"m"))
            with self.assertRaises(leases_client.Conflict):
                await self.client.hold(key, ttl=5)
            with self.assertRaises(leases_client.WaitTimedOut):
                await self.client.hold(key, ttl=5, wait=0.3)
            await asyncio.sleep(3)  # past one TTL and a half, on heartbeats
            lease.check()
            self.assertGreater(lease.time_left(), 0)
            self.assertEqual([i.key for i in await self.client.list(key)], [key])
            waiter = asyncio.create_task(self._hold_after_wait(key))
            await asyncio.sleep(0.5)
            self.assertFalse(waiter.done())
            released_at = time.monotonic()
        self.assertIs(lease.reason, Reason.RELEASED)
        self.assertFalse(lease.lost.is_set())
        second = await waiter
        self.assertGreaterEqual(second.acquired_at, released_at)
        self.assertGreater(second.token, lease.token)
        await second.release()
        self.assertIsNone(await self.client.info(key))

    async def _hold_after_wait(self, key):
        return await self.client.hold(key, ttl=2, wait=10)

    async def test_revoke_sets_the_event_and_calls_back(self):
        key = support.unique_key(self)
        called = []
        callback_ran = asyncio.Event()

        async def on_lost(lease):
            called.append(lease.reason)
            callback_ran.set()

        lease = await self.client.hold(key, ttl=5, on_lost=on_lost)
        self.assertTrue(await self.client.revoke(key))
        await asyncio.wait_for(lease.lost.wait(), 5)
        self.assertIs(lease.reason, Reason.REVOKED)
        with self.assertRaises(leases_client.LeaseLost) as caught:
            lease.check()
        self.assertIs(caught.exception.reason, Reason.REVOKED)
        await asyncio.wait_for(callback_ran.wait(), 5)
        self.assertEqual(called, [Reason.REVOKED])
        await lease.release()
        self.assertFalse(await self.client.revoke(support.unique_key(self, "nobody")))

    async def test_errors_and_auth(self):
        with self.assertRaises(leases_client.InvalidArgument):
            await self.client.hold("/nowhere/x", ttl=5)
        key = support.unique_key(self)
        unauthenticated = leases_client.AsyncClient(support.AUTH_URL)
        try:
            with self.assertRaises(leases_client.Unauthenticated):
                await unauthenticated.hold(key, ttl=5)
            with self.assertRaises(leases_client.Unauthenticated):
                await unauthenticated.list("/system/")
        finally:
            await unauthenticated.close()
        async with leases_client.AsyncClient(support.AUTH_URL, token=support.AUTH_TOKEN) as c:
            async with c.hold(key, ttl=5) as lease:
                self.assertEqual((await c.info(key)).token, lease.token)

    async def test_several_urls_the_first_that_answers(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        key = support.unique_key(self)
        async with leases_client.AsyncClient([dead, support.URL], timeout=5) as client:
            self.assertIsNone(await client.info(key))
            self.assertEqual(client.url, support.URL)
        async with leases_client.AsyncClient(f"{dead},{support.URL}", timeout=5) as client:
            async with client.hold(key, ttl=5) as lease:
                self.assertEqual(lease.url, support.URL)
                self.assertEqual((await client.info(key)).token, lease.token)


if __name__ == "__main__":
    unittest.main()
