"""The deadline rule: a client cut off from its server (a blackholing proxy: no error,
no closed connection, just silence) reports the loss by itself, at its deadline, and
before anyone else can be granted the key."""

import asyncio
import time
import unittest

import leases_client
from leases_client import Reason

import support

TTL = 3.0
# How late past its deadline the client may notice it: thread or task scheduling only
# (generous, for a loaded 2-core CI machine).
SLACK = 0.5


class DeadlineTest(unittest.TestCase):
    def setUp(self):
        support.require_servers(self)
        self.proxy = support.Proxy(support.host_port(support.URL))

    def tearDown(self):
        self.proxy.close()

    def check_order(self, lease, lost_at, blackholed_at, second):
        """The loss came at the deadline rule's instant and before the second grant."""
        self.assertIs(lease.reason, Reason.DEADLINE, lease.message)
        print(
            f"\n  blackholed at 0; deadline {lease.deadline - blackholed_at:.3f}s, "
            f"lost {lease.ended_at - blackholed_at:.3f}s, "
            f"other holder granted {second.acquired_at - blackholed_at:.3f}s",
            end=" ",
        )
        ended_at = lease.ended_at
        # Every answer the client had was to a request sent before the blackhole, and a
        # time left is never more than the TTL: the deadline is at most TTL after it.
        self.assertLessEqual(ended_at, blackholed_at + TTL + SLACK)
        # At its deadline, not before it (no false alarm) and not much after.
        self.assertGreaterEqual(ended_at, lease.deadline)
        self.assertLessEqual(ended_at, lease.deadline + SLACK)
        # The holder heard of the loss before the other holder was granted the key.
        self.assertLessEqual(lost_at, second.acquired_at)
        self.assertLess(ended_at, second.acquired_at)
        self.assertGreater(second.token, lease.token)

    def test_a_blackholed_holder_is_lost_before_another_is_granted(self):
        key = support.unique_key(self)
        lost_at = []
        holder = leases_client.Client(self.proxy.url, timeout=5)
        direct = leases_client.Client(support.URL, timeout=5)
        try:
            lease = holder.hold(key, ttl=TTL, on_lost=lambda l: lost_at.append(time.monotonic()))
            time.sleep(TTL / 2)  # a few heartbeats through the proxy
            lease.check()
            blackholed_at = self.proxy.blackhole()
            with direct.hold(key, ttl=TTL, wait=6 * TTL) as second:
                self.assertTrue(lease.lost.is_set(), "granted to another while not lost")
                self.assertEqual(len(lost_at), 1)
                self.check_order(lease, lost_at[0], blackholed_at, second)
                with self.assertRaises(leases_client.LeaseLost) as caught:
                    lease.check()
                self.assertIs(caught.exception.reason, Reason.DEADLINE)
            lease.release()
        finally:
            holder.close()
            direct.close()

    def test_the_async_client_keeps_the_rule_too(self):
        asyncio.run(self._async_blackhole())

    async def _async_blackhole(self):
        key = support.unique_key(self)
        lost_at = []
        holder = leases_client.AsyncClient(self.proxy.url, timeout=5)
        direct = leases_client.AsyncClient(support.URL, timeout=5)
        try:
            lease = await holder.hold(
                key, ttl=TTL, on_lost=lambda l: lost_at.append(time.monotonic())
            )
            await asyncio.sleep(TTL / 2)
            lease.check()
            blackholed_at = self.proxy.blackhole()
            async with direct.hold(key, ttl=TTL, wait=6 * TTL) as second:
                self.assertTrue(lease.lost.is_set(), "granted to another while not lost")
                self.assertEqual(len(lost_at), 1)
                self.check_order(lease, lost_at[0], blackholed_at, second)
            await lease.release()
        finally:
            await holder.close()
            await direct.close()


if __name__ == "__main__":
    unittest.main()
