"""Findings of an adversarial review of the Python client, one test each (each failed
before its fix): a waited grant confirmed by a heartbeat, a dropped lease released, a
cancelled hold() leaving no holder, release() after the deadline reporting the loss,
concurrent release() calls, and an answer already past its own deadline.

Run with the rest of the suite (clients/python/test.sh starts `leases serve --min-ttl 1s`).
"""

import asyncio
import gc
import threading
import time
import unittest

from unittest import mock

import leases_client
from leases_client import Reason, _core

import support

TTL = 1.0


def wait_until_free(client, key, within):
    """Polls `info` until nobody holds `key`; the lease info still there at the end, or None."""
    end = time.monotonic() + within
    info = client.info(key)
    while info is not None and time.monotonic() < end:
        time.sleep(0.1)
        info = client.info(key)
    return info


class WaitedGrantTest(unittest.TestCase):
    """protocol.md, `Hold` step 2: after an acquire that waited, the grant's deadline "may
    already be close or past: send one heartbeat at once and count from its answer". The
    client instead ends such a lease as DEADLINE in `State.granted` and raises, so `wait`
    fails whenever the key stayed held longer than the asked TTL's time left."""

    def setUp(self):
        support.require_servers(self)
        self.client = leases_client.Client(support.URL, timeout=10)

    def tearDown(self):
        self.client.close()

    def test_blocking_a_grant_after_a_long_wait_is_confirmed_not_refused(self):
        key = support.unique_key(self)
        first = self.client.hold(key, ttl=TTL)
        threading.Timer(2.5 * TTL, first.release).start()
        # Waits ~2.5 s; the grant's deadline (acquire sent + time left <= 1 s) is past.
        second = self.client.hold(key, ttl=TTL, wait=10)
        try:
            self.assertIsNone(second.reason, second.message)
            self.assertGreater(second.time_left(), 0)
            second.check()
        finally:
            second.release()

    def test_async_a_grant_after_a_long_wait_is_confirmed_not_refused(self):
        asyncio.run(self._async_waited())

    async def _async_waited(self):
        key = support.unique_key(self)
        client = leases_client.AsyncClient(support.URL, timeout=10)
        try:
            first = await client.hold(key, ttl=TTL)

            async def release_later():
                await asyncio.sleep(2.5 * TTL)
                await first.release()

            releaser = asyncio.create_task(release_later())
            second = await client.hold(key, ttl=TTL, wait=10)
            await releaser
            self.assertIsNone(second.reason, second.message)
            self.assertGreater(second.time_left(), 0)
            await second.release()
        finally:
            await client.close()


class DroppedLeaseTest(unittest.TestCase):
    """DESIGN.md guarantee 4: "A dropped `Lease` is released." The keeper thread (task)
    holds the lease, so a lease nobody references any more heartbeats until the process
    exits: the key is taken forever, by no one."""

    def setUp(self):
        support.require_servers(self)
        self.client = leases_client.Client(support.URL, timeout=10)

    def tearDown(self):
        self.client.close()

    def test_blocking_a_dropped_lease_frees_the_key(self):
        key = support.unique_key(self)
        self.client.hold(key, ttl=TTL)  # dropped at once
        gc.collect()
        left = wait_until_free(self.client, key, within=4 * TTL)
        try:
            self.assertIsNone(left, f"a dropped lease still holds the key: {left}")
        finally:
            self.client.revoke(key)

    def test_async_a_dropped_lease_frees_the_key(self):
        asyncio.run(self._async_dropped())

    async def _async_dropped(self):
        key = support.unique_key(self)
        client = leases_client.AsyncClient(support.URL, timeout=10)
        try:
            await client.hold(key, ttl=TTL)  # dropped at once
            gc.collect()
            await asyncio.sleep(4 * TTL)
            left = await client.info(key)
            await client.revoke(key)
            self.assertIsNone(left, f"a dropped lease still holds the key: {left}")
        finally:
            await client.close()


class AsyncCancelTest(unittest.IsolatedAsyncioTestCase):
    """DESIGN.md, "Every `.await` may be the last": `hold(..., wait=...)` cancelled while
    it confirms the grant with a heartbeat (a `wait_for`, a TaskGroup, a shutdown) raises
    CancelledError to the caller, who has no lease, but the reader and keeper tasks it
    already started keep heartbeating: the key is held forever by nobody."""

    async def asyncSetUp(self):
        support.require_servers(self)
        self.direct = leases_client.AsyncClient(support.URL, timeout=10)
        # The holder goes through a proxy, so that the confirmation's answer can be held
        # back for a moment (a slow network) while the caller gives up.
        self.proxy = support.Proxy(support.host_port(support.URL))
        self.client = leases_client.AsyncClient(self.proxy.url, timeout=10)

    async def asyncTearDown(self):
        await self.client.close()
        await self.direct.close()
        self.proxy.close()

    async def test_a_hold_cancelled_while_confirming_leaves_no_holder(self):
        key = support.unique_key(self)
        holding = self.client.hold(key, ttl=TTL, wait=5)
        lease = holding._lease  # only to see when the grant was read

        async def caller():
            return await holding

        # The confirming heartbeat's answer is late: the proxy goes silent the moment the
        # grant is read, before the heartbeat is written (blackholing once the test's
        # task saw the token raced with that heartbeat's round trip on localhost).
        granted = _core.State.granted

        def granted_then_blackhole(state, *args, **kwargs):
            granted(state, *args, **kwargs)
            self.proxy.blackhole()

        with mock.patch.object(_core.State, "granted", granted_then_blackhole):
            task = asyncio.create_task(caller())
            while lease.token is None and not task.done():
                await asyncio.sleep(0)
        await asyncio.sleep(0.3)  # the heartbeat is written; hold() awaits its answer
        task.cancel()  # e.g. asyncio.wait_for(client.hold(...), 2), a TaskGroup, shutdown
        try:
            await task
        except asyncio.CancelledError:
            pass
        self.assertTrue(task.cancelled(), "the grant was confirmed before the cancel came")
        self.proxy.blackholed.clear()  # the network is fine again
        await asyncio.sleep(4 * TTL)
        left = await self.direct.info(key)
        # Clean up the orphan whatever the outcome.
        for t in (lease._keeper, lease._reader):
            if t is not None:
                t.cancel()
        await self.direct.revoke(key)
        self.assertIsNone(
            left, f"nobody holds the lease, yet it is kept alive: {left}, reason {lease.reason}"
        )


class AsyncBlockedLoopTest(unittest.IsolatedAsyncioTestCase):
    """Guarantees 2 and 4 with a blocked event loop (CPU-bound work or a blocking call in
    the `async with` body): the deadline passes, the server ends the lease and grants the
    key to someone else; then the block exits and `release()` ends the lease as RELEASED
    (it never compares the deadline with the clock): `lost` is never set, `on_lost` never
    runs, and the loss is reported as a clean release, after another holder was granted."""

    async def asyncSetUp(self):
        support.require_servers(self)
        self.client = leases_client.AsyncClient(support.URL, timeout=10)
        self.other = leases_client.Client(support.URL, timeout=10)

    async def asyncTearDown(self):
        await self.client.close()
        self.other.close()

    async def test_release_after_the_deadline_reports_the_loss(self):
        key = support.unique_key(self)
        granted = []

        def take():
            end = time.monotonic() + 6 * TTL
            while time.monotonic() < end:
                try:
                    granted.append(self.other.hold(key, ttl=5 * TTL))
                    return
                except leases_client.Conflict:
                    time.sleep(0.05)

        lost = []
        async with self.client.hold(key, ttl=TTL, on_lost=lost.append) as lease:
            taker = threading.Thread(target=take)
            taker.start()
            time.sleep(4 * TTL)  # the loop is blocked well past the deadline
        taker.join()
        try:
            self.assertTrue(granted, "nobody else was granted the key meanwhile")
            print(
                f"\n  deadline at 0; other granted {granted[0].acquired_at - lease.deadline:.3f}s, "
                f"ours ended {lease.ended_at - lease.deadline:.3f}s as {lease.reason}",
                end=" ",
            )
            self.assertIsNot(lease.reason, Reason.RELEASED, "a loss reported as a release")
            self.assertTrue(lease.lost.is_set())
            self.assertEqual(lost, [lease])
        finally:
            for g in granted:
                g.release()


class BlockingReleaseAfterStallTest(unittest.TestCase):
    """The same defect in the blocking client: `Lease.release()` ends the lease as
    RELEASED without comparing the deadline with the clock. A holder thread that held
    the GIL past the deadline (a long regex, a C extension) races the keeper thread when
    it calls `release()`; in a probe (ttl 1 s, a catastrophic regex stalling ~1.2 s,
    then `release()`) 1 run in 5 reported RELEASED with `lost` unset. To make it
    deterministic, the client's clock is moved past the deadline (as a stall moves it,
    seen from the stalled thread) while the keeper sleeps its real-time wait."""

    def setUp(self):
        support.require_servers(self)
        self.client = leases_client.Client(support.URL, timeout=10)

    def tearDown(self):
        self.client.close()

    def test_release_after_the_deadline_reports_the_loss(self):
        key = support.unique_key(self)
        lease = self.client.hold(key, ttl=10)
        stalled = lease.deadline + 0.5 - time.monotonic()
        with mock.patch.object(_core, "clock", lambda: time.monotonic() + stalled):
            lease.release()  # the holder's first step after the stall
            self.assertIsNot(lease.reason, Reason.RELEASED, "a loss reported as a release")
            self.assertTrue(lease.lost.is_set())


class ConcurrentReleaseTest(unittest.TestCase):
    """The blocking client from several threads: `release()` promises to return "once
    the server has freed the key". A second, concurrent `release()` finds the state
    already RELEASED and cancels the call at once, which can reset the stream before the
    `release` message went out: the key then stays taken (a broken stream) for the time
    left, and the second caller returns before the key is free."""

    def setUp(self):
        support.require_servers(self)
        self.client = leases_client.Client(support.URL, timeout=10)

    def tearDown(self):
        self.client.close()

    def test_two_threads_releasing_free_the_key(self):
        failures = 0
        for _ in range(10):
            key = support.unique_key(self)
            lease = self.client.hold(key, ttl=10)
            barrier = threading.Barrier(2)
            after = []

            def release():
                barrier.wait()
                lease.release()
                after.append(self.client.info(key))

            threads = [threading.Thread(target=release) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if any(info is not None for info in after):
                failures += 1
            self.client.revoke(key)
        self.assertEqual(failures, 0, f"{failures}/10: a release() returned with the key still taken")


class AnswerAlreadyPastTest(unittest.TestCase):
    """A `renewed` whose own deadline (send instant + time_left) is already past when it
    is read (time_left 0 or negative, or a slow answer to an old heartbeat) is taken as
    a live lease: `renewed()` checks only the previous deadline. On the acquire-with-wait
    path that answer is the confirmation, and `hold()` hands the caller a lease whose
    deadline has passed, with `reason` None and `lost` unset (until the keeper runs).
    `granted()` does end such a lease; `renewed()` should too."""

    def setUp(self):
        self.now = 100.0
        patcher = mock.patch.object(_core, "clock", lambda: self.now)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.state = _core.State(ttl=10.0)
        self.state.acquire_sent(100.0)
        self.now = 100.1
        self.state.granted(7, 8.0)  # deadline 108

    def test_a_renewed_already_past_ends_the_lease(self):
        self.state.heartbeat_sent(101.0)
        self.now = 103.0
        self.assertTrue(self.state.renewed(-1.0), "a lease kept alive past its deadline")
        self.assertIs(self.state.reason, Reason.DEADLINE)

    def test_a_slow_answer_past_its_own_deadline_ends_the_lease(self):
        self.state.heartbeat_sent(101.0)
        self.now = 103.0  # the answer to a heartbeat sent at 101 with 1 s left: 102
        self.assertTrue(self.state.renewed(1.0), "a lease kept alive past its deadline")
        self.assertIs(self.state.reason, Reason.DEADLINE)


if __name__ == "__main__":
    unittest.main()
