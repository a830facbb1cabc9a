"""The blocking client against a real `leases serve` (started by test.sh)."""

import threading
import time
import unittest

import leases_client
from leases_client import Reason

import support


class BlockingTest(unittest.TestCase):
    def setUp(self):
        support.require_servers(self)
        self.client = leases_client.Client(support.URL, timeout=10)

    def tearDown(self):
        self.client.close()

    def key(self, *rest):
        return support.unique_key(self, *rest)

    def test_the_installed_package_is_tested(self):
        self.assertIn("site-packages", leases_client.__file__)

    def test_hold_gives_a_token_keeps_it_past_its_ttl_and_release_frees_the_key(self):
        key = self.key()
        with self.client.hold(key, ttl=2, metadata=b"host-a") as lease:
            self.assertGreater(lease.token, 0)
            self.assertGreater(lease.time_left(), 0)
            self.assertLessEqual(lease.time_left(), 2)
            info = self.client.info(key)
            self.assertEqual((info.token, info.metadata), (lease.token, b"host-a"))
            # Heartbeats keep it well past one TTL.
            time.sleep(3)
            lease.check()
            self.assertFalse(lease.lost.is_set())
            self.assertIsNone(lease.reason)
            self.assertGreater(lease.time_left(), 0)
            first = lease.token
        self.assertIs(lease.reason, Reason.RELEASED)
        self.assertFalse(lease.lost.is_set())
        with self.assertRaises(leases_client.LeaseLost) as caught:
            lease.check()
        self.assertIs(caught.exception.reason, Reason.RELEASED)
        # Free at once after the release, and the next token is greater.
        self.assertIsNone(self.client.info(key))
        with self.client.hold(key, ttl=5) as again:
            self.assertGreater(again.token, first)

    def test_conflict_says_what_the_server_said(self):
        key = self.key()
        with self.client.hold(key, ttl=5) as lease:
            with self.assertRaises(leases_client.Conflict) as caught:
                self.client.hold(key, ttl=5)
            self.assertEqual(caught.exception.message, "lease already held")
            lease.check()

    def test_wait_is_granted_after_the_release_and_times_out_while_held(self):
        key = self.key()
        first = self.client.hold(key, ttl=2)
        with self.assertRaises(leases_client.WaitTimedOut):
            self.client.hold(key, ttl=2, wait=0.5)
        released_at = []

        def release_later():
            time.sleep(1)
            released_at.append(time.monotonic())
            first.release()

        threading.Thread(target=release_later).start()
        with self.client.hold(key, ttl=2, wait=10) as second:
            self.assertGreaterEqual(second.acquired_at, released_at[0])
            self.assertGreater(second.token, first.token)
            # The client confirmed it with a heartbeat before handing it over.
            self.assertGreater(second.time_left(), 1)

    def test_revoke_ends_the_holders_lease_with_reason_revoked(self):
        key = self.key()
        called = []
        callback_ran = threading.Event()

        def on_lost(lost_lease):
            called.append(lost_lease.reason)
            callback_ran.set()

        lease = self.client.hold(key, ttl=5, on_lost=on_lost)
        self.assertTrue(self.client.revoke(key))
        self.assertTrue(lease.lost.wait(5), "revoke did not reach the holder")
        self.assertIs(lease.reason, Reason.REVOKED)
        with self.assertRaises(leases_client.LeaseLost) as caught:
            lease.check()
        self.assertIs(caught.exception.reason, Reason.REVOKED)
        self.assertEqual(lease.time_left(), 0)
        # The event is set before the callback runs: wait for the callback.
        self.assertTrue(callback_ran.wait(5), "on_lost was not called")
        self.assertEqual(called, [Reason.REVOKED])
        lease.release()
        self.assertIs(lease.reason, Reason.REVOKED)
        self.assertFalse(self.client.revoke(self.key("nobody")))

    def test_info_and_list(self):
        prefix = self.key() + "/"
        a, b = prefix + "a", prefix + "b"
        self.assertIsNone(self.client.info(a))
        self.assertEqual(self.client.list(prefix), [])
        with self.client.hold(b, ttl=5, metadata="two") as lb, self.client.hold(
            a, ttl=6, metadata=b"one"
        ) as la:
            listed = self.client.list(prefix)
            self.assertEqual([i.key for i in listed], [a, b])
            self.assertEqual([i.token for i in listed], [la.token, lb.token])
            self.assertEqual([i.metadata for i in listed], [b"one", b"two"])
            self.assertEqual(listed[0].ttl, 6)
            self.assertFalse(listed[0].revoked)
            self.assertGreater(listed[0].expires_in, 0)
            self.assertEqual([i.key for i in self.client.list(prefix, limit=1)], [a])
            info = self.client.info(b)
            self.assertEqual((info.key, info.token, info.metadata), (b, lb.token, b"two"))
            self.assertEqual(info.acquired_at, listed[1].acquired_at)
        self.assertEqual(self.client.list(prefix), [])

    def test_invalid_arguments(self):
        with self.assertRaises(leases_client.InvalidArgument):
            self.client.hold("/nowhere/x", ttl=5)
        with self.assertRaises(leases_client.InvalidArgument) as caught:
            self.client.hold(self.key(), ttl=0.5)  # the server's minimum is 1 s
        self.assertTrue(caught.exception.ttl_refusal.startswith("too-short 0.500000000 "))
        with self.assertRaises(leases_client.InvalidArgument):
            self.client.info("/system/a%2fb")

    def test_an_unreachable_server_is_unavailable(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = leases_client.Client(f"http://127.0.0.1:{port}", timeout=2)
        with self.assertRaises(leases_client.Unavailable):
            client.info(self.key())
        with self.assertRaises(leases_client.Unavailable):
            client.hold(self.key(), ttl=5)
        client.close()

    def test_several_urls_the_first_that_answers(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        key = self.key()
        with leases_client.Client(f"{dead},{support.URL}", timeout=5) as client:
            self.assertEqual(client.urls, (dead, support.URL))
            self.assertIsNone(client.info(key))
            self.assertEqual(client.url, support.URL, "the one that answered comes first now")
        with leases_client.Client([dead, support.URL], timeout=5) as client:
            with client.hold(key, ttl=5) as lease:
                self.assertEqual(lease.url, support.URL)
                self.assertEqual(client.info(key).token, lease.token)
                self.assertTrue(client.revoke(self.key("none")) is False)
        with leases_client.Client([dead], timeout=2) as client:
            with self.assertRaises(leases_client.Unavailable):
                client.hold(key, ttl=5)


class AuthTest(unittest.TestCase):
    def setUp(self):
        support.require_servers(self)

    def test_the_bearer_token_is_required_and_checked(self):
        key = support.unique_key(self)
        for token in (None, "wrong"):
            with leases_client.Client(support.AUTH_URL, token=token) as client:
                with self.assertRaises(leases_client.Unauthenticated):
                    client.info(key)
                with self.assertRaises(leases_client.Unauthenticated):
                    client.hold(key, ttl=5)
        with leases_client.Client(support.AUTH_URL, token=support.AUTH_TOKEN) as client:
            with client.hold(key, ttl=5) as lease:
                self.assertEqual(client.info(key).token, lease.token)
                self.assertEqual([i.key for i in client.list(key)], [key])
            self.assertIsNone(client.info(key))


if __name__ == "__main__":
    unittest.main()
