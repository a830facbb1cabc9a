"""Re-attaching a lease whose stream broke (leases.proto, RE-ATTACHING): the holder keeps
its lease, same token, without noticing, through the same server (a connection cut by
a proxy) or through another server of the same store (PostgreSQL: the first one
stopped with SIGTERM, which hands its leases over, or killed with SIGKILL); a refused
re-attach loses the lease at once; a re-attach that keeps failing loses it at its
deadline, never later; a release asked for meanwhile is carried out once re-attached.

Each test fails with re-attaching turned off: LEASES_TEST_REATTACH=0 builds the
clients here with `reattach=False` (see support.REATTACH).

The servers: the plain memory server test.sh started, and `leases serve` processes of
each test's own on the PostgreSQL test.sh started (support.Server).
"""

import asyncio
import threading
import time
import unittest

import leases_client
from leases_client import Reason

import support

#: Several seconds: a loaded 2-core machine must not lose a lease by slowness alone.
TTL = 4.0
# How late past its deadline the client may notice it: thread or task scheduling only.
SLACK = 0.5


def holds(client, key, token, for_, every=0.25, lease=None):
    """Checks, for `for_` seconds, that `key` is held with `token` (and that `lease`
    is); the first info that says otherwise, or None."""
    end = time.monotonic() + for_
    while time.monotonic() < end:
        info = client.info(key)
        if info is None or info.token != token:
            return info
        if lease is not None:
            lease.check()
        time.sleep(every)
    return None


class SameServerTest(unittest.TestCase):
    """One server on the memory backend, the holder behind a proxy that cuts the
    connection (both sides see it reset) while the server lives."""

    def setUp(self):
        support.require_servers(self)
        self.proxy = support.Proxy(support.host_port(support.URL))
        self.client = leases_client.Client(self.proxy.url, timeout=5, reattach=support.REATTACH)
        self.direct = leases_client.Client(support.URL, timeout=5)

    def tearDown(self):
        self.client.close()
        self.direct.close()
        self.proxy.close()

    def test_a_cut_stream_is_reattached_to_the_same_server_unnoticed(self):
        key = support.unique_key(self)
        lost = []
        lease = self.client.hold(key, ttl=TTL, on_lost=lost.append)
        token = lease.token
        time.sleep(TTL / 2)  # a few heartbeats on the first stream
        self.proxy.cut()
        self.assertTrue(
            support.wait_for(lambda: lease.reattachments == 1 or lease.lost.is_set(), TTL),
            "not re-attached within a TTL",
        )
        self.assertIsNone(lease.reason, lease.message)
        self.assertEqual(lease.reattachments, 1)
        self.assertEqual(lease.token, token, "a re-attached lease keeps its token")
        self.assertEqual(self.proxy.connections, 2, "re-attached on a new connection")
        # Past a whole TTL after the cut, on the new stream's heartbeats: still held.
        self.assertIsNone(holds(self.direct, key, token, TTL, lease=lease))
        self.assertGreater(lease.time_left(), 0)
        lease.release()
        self.assertIs(lease.reason, Reason.RELEASED)
        self.assertFalse(lease.lost.is_set())
        self.assertEqual(lost, [])
        self.assertIsNone(self.direct.info(key), "the release on the new stream frees the key")

    def test_a_release_while_reattaching_is_carried_out_once_reattached(self):
        key = support.unique_key(self)
        lease = self.client.hold(key, ttl=TTL)
        self.proxy.cut(refuse=True)  # and every new connection, for now
        self.assertTrue(support.wait_for(lambda: lease.reattaching, TTL / 2), lease.reason)
        releasing = threading.Thread(target=lease.release)
        releasing.start()
        time.sleep(TTL / 8)
        self.assertTrue(releasing.is_alive(), "release() returned before the re-attach")
        self.assertIsNone(lease.reason, lease.message)
        self.assertEqual(self.direct.info(key).token, lease.token)
        self.proxy.admit()
        releasing.join(TTL + 5)
        self.assertFalse(releasing.is_alive())
        self.assertIs(lease.reason, Reason.RELEASED, lease.message)
        self.assertEqual(lease.reattachments, 1)
        self.assertFalse(lease.lost.is_set())
        # Released, not left to expire: free at once.
        self.assertIsNone(self.direct.info(key))

    def test_a_reattach_that_keeps_failing_is_lost_at_the_deadline_even_if_released(self):
        key = support.unique_key(self)
        lost_at = []
        lease = self.client.hold(key, ttl=TTL, on_lost=lambda _: lost_at.append(time.monotonic()))
        time.sleep(TTL / 4)
        cut_at = self.proxy.cut(refuse=True)
        self.assertTrue(support.wait_for(lambda: lease.reattaching, TTL / 2), lease.reason)
        # A release asked for meanwhile waits for the outcome: here, the loss.
        released_at = []
        releasing = threading.Thread(
            target=lambda: (lease.release(), released_at.append(time.monotonic()))
        )
        releasing.start()
        self.assertTrue(lease.lost.wait(TTL + 5), "never lost")
        releasing.join(10)
        self.assertGreaterEqual(released_at[0], lease.ended_at, "release() returned first")
        self.assertIs(lease.reason, Reason.DEADLINE, lease.message)
        print(
            f"\n  cut at 0; deadline {lease.deadline - cut_at:.3f}s, "
            f"lost {lease.ended_at - cut_at:.3f}s",
            end=" ",
        )
        # Not before its deadline (the holder is not told of the broken stream) and not
        # later than the deadline rule allows.
        self.assertGreaterEqual(lease.ended_at, lease.deadline)
        self.assertLessEqual(lease.ended_at, lease.deadline + SLACK)
        self.assertLessEqual(lease.deadline, cut_at + TTL)
        self.assertEqual(len(lost_at), 1)
        self.assertLessEqual(lost_at[0], lease.deadline + SLACK)
        self.proxy.admit()
        self.direct.revoke(key)


class MemoryShutdownTest(unittest.TestCase):
    """A server on the memory backend that stops gracefully ends its leases (`ended {
    SHUTDOWN }`): they cannot live on anywhere, and such an end is not re-attached."""

    def test_shutdown_is_not_reattached(self):
        server = support.Server(memory=True)
        self.addCleanup(server.close)
        with leases_client.Client(server.url, timeout=5, reattach=support.REATTACH) as client:
            lease = client.hold(support.unique_key(self), ttl=TTL)
            server.terminate()
            self.assertTrue(lease.lost.wait(TTL / 2), "a SHUTDOWN must end the lease at once")
            self.assertIs(lease.reason, Reason.SHUTDOWN, lease.message)
            self.assertEqual(lease.reattachments, 0)
            self.assertFalse(lease.reattaching)
            lease.release()


class PostgresTest(unittest.TestCase):
    """Two `leases serve` on one PostgreSQL: the server holding the lease goes away."""

    def setUp(self):
        self.a = support.Server()
        self.addCleanup(self.a.close)
        self.b = support.Server()
        self.addCleanup(self.b.close)
        self.client = leases_client.Client(
            [self.a.url, self.b.url], timeout=5, reattach=support.REATTACH
        )
        self.addCleanup(self.client.close)
        self.other = leases_client.Client(self.b.url, timeout=5)
        self.addCleanup(self.other.close)

    def moves_to_b(self, stop):
        key = support.unique_key(self)
        lost = []
        lease = self.client.hold(key, ttl=TTL, metadata=b"m", on_lost=lost.append)
        self.assertEqual(lease.url, self.a.url, "the first server that answers")
        token = lease.token
        time.sleep(TTL / 2)
        stopped_at = time.monotonic()
        stop(self.a)
        self.assertTrue(
            support.wait_for(lambda: lease.reattachments == 1 or lease.lost.is_set(), TTL),
            "not re-attached within a TTL",
        )
        self.assertIsNone(lease.reason, lease.message)
        self.assertFalse(lease.lost.is_set())
        self.assertEqual((lease.token, lease.url), (token, self.b.url))
        print(f"\n  re-attached through the other server {time.monotonic() - stopped_at:.3f}s after the stop", end=" ")
        info = self.other.info(key)
        self.assertEqual((info.token, info.metadata), (token, b"m"))
        # The store would have let the lease expire a TTL after the first server last
        # renewed it: past that, the other server holds it.
        left = holds(self.other, key, token, stopped_at + 1.5 * TTL - time.monotonic(), lease=lease)
        self.assertIsNone(left, "the lease went away after the server that held it")
        self.assertEqual(lost, [])
        lease.release()
        self.assertIs(lease.reason, Reason.RELEASED)
        self.assertIsNone(self.other.info(key))
        self.assertEqual(lost, [])

    def test_sigterm_hands_the_lease_over_and_the_client_reattaches_through_the_other(self):
        def terminate(server):
            server.terminate()
            server.wait(30)  # it hands its leases over at once, then exits

        self.moves_to_b(terminate)

    def test_sigkill_and_the_client_reattaches_through_the_other(self):
        self.moves_to_b(lambda server: server.kill())

    def test_a_reattach_refused_loses_the_lease_at_once(self):
        key = support.unique_key(self)
        lost = []
        lease = self.client.hold(key, ttl=TTL, on_lost=lost.append)
        time.sleep(TTL / 4)
        # The first server freezes (the client hears nothing), the lease is revoked
        # through the other, then the first dies: the client's re-attach is refused.
        self.a.pause()
        self.assertTrue(self.other.revoke(key))
        self.a.kill()
        self.assertTrue(lease.lost.wait(TTL), "not lost")
        self.assertIs(lease.reason, Reason.LOST, lease.message)
        self.assertIn("could not be re-attached", lease.message)
        self.assertLess(lease.ended_at, lease.deadline, "lost at once, not at the deadline")
        self.assertEqual(lease.reattachments, 0)
        self.assertTrue(support.wait_for(lambda: lost == [lease], 5), lost)
        with self.assertRaises(leases_client.LeaseLost):
            lease.check()


class AsyncTest(unittest.IsolatedAsyncioTestCase):
    """The async client: the same, on a cut connection and across servers."""

    async def asyncSetUp(self):
        support.require_servers(self)
        self.proxy = support.Proxy(support.host_port(support.URL))
        self.direct = leases_client.AsyncClient(support.URL, timeout=5)

    async def asyncTearDown(self):
        await self.direct.close()
        self.proxy.close()

    async def wait_for(self, condition, within):
        end = time.monotonic() + within
        while not condition():
            if time.monotonic() >= end:
                return False
            await asyncio.sleep(0.02)
        return True

    async def test_a_cut_stream_is_reattached_to_the_same_server_unnoticed(self):
        key = support.unique_key(self)
        lost = []
        async with leases_client.AsyncClient(
            self.proxy.url, timeout=5, reattach=support.REATTACH
        ) as client:
            async with client.hold(key, ttl=TTL, on_lost=lost.append) as lease:
                token = lease.token
                await asyncio.sleep(TTL / 2)
                self.proxy.cut()
                self.assertTrue(
                    await self.wait_for(lambda: lease.reattachments == 1 or lease.lost.is_set(), TTL)
                )
                self.assertIsNone(lease.reason, lease.message)
                self.assertEqual(lease.token, token)
                end = time.monotonic() + TTL
                while time.monotonic() < end:
                    self.assertEqual((await self.direct.info(key)).token, token)
                    lease.check()
                    await asyncio.sleep(0.25)
            self.assertIs(lease.reason, Reason.RELEASED)
            self.assertEqual(lost, [])
            self.assertIsNone(await self.direct.info(key))

    async def test_a_release_while_reattaching_is_carried_out_once_reattached(self):
        key = support.unique_key(self)
        async with leases_client.AsyncClient(
            self.proxy.url, timeout=5, reattach=support.REATTACH
        ) as client:
            lease = await client.hold(key, ttl=TTL)
            self.proxy.cut(refuse=True)
            self.assertTrue(await self.wait_for(lambda: lease.reattaching, TTL / 2), lease.reason)
            releasing = asyncio.create_task(lease.release())
            await asyncio.sleep(TTL / 8)
            self.assertFalse(releasing.done(), "release() returned before the re-attach")
            self.assertIsNone(lease.reason, lease.message)
            self.proxy.admit()
            await asyncio.wait_for(releasing, TTL + 5)
            self.assertIs(lease.reason, Reason.RELEASED, lease.message)
            self.assertEqual(lease.reattachments, 1)
            self.assertFalse(lease.lost.is_set())
            self.assertIsNone(await self.direct.info(key))

    async def test_a_reattach_refused_loses_the_lease_at_once(self):
        # One server: the holder's connection goes silent, the lease is revoked (the
        # server's `ended { REVOKED }` stays in the proxy), then the connection is cut:
        # the re-attach finds the lease revoked.
        key = support.unique_key(self)
        async with leases_client.AsyncClient(
            self.proxy.url, timeout=5, reattach=support.REATTACH
        ) as client:
            lease = await client.hold(key, ttl=TTL)
            self.proxy.blackhole()
            self.assertTrue(await self.direct.revoke(key))
            await asyncio.sleep(0.2)  # the server ends the stream (into the proxy)
            self.proxy.cut()
            self.proxy.blackholed.clear()
            await asyncio.wait_for(lease.lost.wait(), TTL)
            self.assertIs(lease.reason, Reason.LOST, lease.message)
            self.assertIn("could not be re-attached", lease.message)
            self.assertLess(lease.ended_at, lease.deadline)
            await lease.release()


class AsyncPostgresTest(unittest.IsolatedAsyncioTestCase):
    """The async client across two servers on one PostgreSQL."""

    def setUp(self):
        # In the main thread, off the event loop (support.Server waits for them; the
        # servers die with the thread that started them).
        self.a = support.Server()
        self.addCleanup(self.a.close)
        self.b = support.Server()
        self.addCleanup(self.b.close)

    async def test_sigterm_hands_the_lease_over_and_the_client_reattaches_through_the_other(self):
        a, b = self.a, self.b
        key = support.unique_key(self)
        async with leases_client.AsyncClient(
            f"{a.url},{b.url}", timeout=5, reattach=support.REATTACH
        ) as client, leases_client.AsyncClient(b.url, timeout=5) as other:
            lost = []
            lease = await client.hold(key, ttl=TTL, on_lost=lost.append)
            token = lease.token
            self.assertEqual(lease.url, a.url)
            await asyncio.sleep(TTL / 2)
            stopped_at = time.monotonic()
            a.terminate()
            end = time.monotonic() + TTL
            while lease.reattachments == 0 and not lease.lost.is_set():
                self.assertLess(time.monotonic(), end, "not re-attached within a TTL")
                await asyncio.sleep(0.02)
            self.assertIsNone(lease.reason, lease.message)
            self.assertEqual((lease.token, lease.url), (token, b.url))
            while time.monotonic() < stopped_at + 1.5 * TTL:
                self.assertEqual((await other.info(key)).token, token)
                lease.check()
                await asyncio.sleep(0.25)
            await lease.release()
            self.assertIs(lease.reason, Reason.RELEASED)
            self.assertEqual(lost, [])
            self.assertIsNone(await other.info(key))


if __name__ == "__main__":
    unittest.main()
