"""The deadline rule's bookkeeping (leases_client._core.State) on a hand-moved clock."""

import unittest
from unittest import mock

from leases_client import LeaseLost, Reason
from leases_client import _core


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class StateTest(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        patcher = mock.patch.object(_core, "clock", self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.state = _core.State(ttl=10.0)

    def grant(self, sent=100.0, answered=100.5, time_left=8.0):
        self.clock.now = sent
        self.state.acquire_sent(sent)
        self.clock.now = answered
        self.state.granted(7, time_left)

    def test_the_deadline_counts_from_the_acquire_sent_not_the_answer(self):
        self.grant(sent=100.0, answered=101.0, time_left=8.0)
        self.assertEqual(self.state.deadline, 108.0)
        self.assertEqual(self.state.time_left(), 7.0)

    def test_answers_pair_with_heartbeats_in_the_order_sent(self):
        self.grant()
        self.state.heartbeat_sent(102.0)
        self.state.heartbeat_sent(103.0)
        self.clock.now = 103.5
        self.assertFalse(self.state.renewed(8.0))
        self.assertEqual(self.state.deadline, 110.0)  # the first heartbeat's instant
        self.assertFalse(self.state.renewed(6.0))
        self.assertEqual(self.state.deadline, 109.0)  # the second's, even if earlier

    def test_a_time_left_above_the_ttl_is_capped(self):
        self.grant(time_left=1000.0)
        self.assertEqual(self.state.deadline, 110.0)
        self.state.heartbeat_sent(101.0)
        self.state.renewed(1000.0)
        self.assertEqual(self.state.deadline, 111.0)

    def test_at_the_deadline_the_lease_is_lost_and_no_answer_revives_it(self):
        self.grant(time_left=8.0)  # deadline 108
        self.state.heartbeat_sent(104.0)
        self.clock.now = 107.999
        self.assertFalse(self.state.expire_if_due())
        self.state.check()
        self.clock.now = 108.0
        self.assertTrue(self.state.expire_if_due())
        self.assertIs(self.state.reason, Reason.DEADLINE)
        self.assertEqual(self.state.ended_at, 108.0)
        self.assertFalse(self.state.renewed(8.0))  # late: ignored
        self.assertEqual(self.state.deadline, 108.0)
        self.assertEqual(self.state.time_left(), 0.0)
        with self.assertRaises(LeaseLost) as caught:
            self.state.check()
        self.assertIs(caught.exception.reason, Reason.DEADLINE)

    def test_an_answer_that_comes_after_the_deadline_ends_the_lease(self):
        self.grant(time_left=8.0)  # deadline 108
        self.state.heartbeat_sent(101.0)
        self.clock.now = 108.5
        self.assertTrue(self.state.renewed(8.0))
        self.assertIs(self.state.reason, Reason.DEADLINE)
        self.assertEqual(self.state.deadline, 108.0)

    def test_a_grant_already_past_its_deadline_is_lost(self):
        self.grant(sent=100.0, answered=105.0, time_left=4.0)
        self.assertIs(self.state.reason, Reason.DEADLINE)

    def test_an_answer_to_no_heartbeat_breaks_the_lease(self):
        self.grant()
        self.assertTrue(self.state.renewed(8.0))
        self.assertIs(self.state.reason, Reason.BROKEN)

    def test_the_first_end_wins(self):
        self.grant()
        self.assertTrue(self.state.end(Reason.REVOKED, "revoked"))
        self.assertFalse(self.state.end(Reason.RELEASED, "released by the holder"))
        self.assertFalse(self.state.heartbeat_sent(101.0))
        self.assertIs(self.state.reason, Reason.REVOKED)

    def test_a_broken_stream_forgets_its_heartbeats_and_the_resume_counts_from_its_acquire(self):
        self.grant()  # deadline 108
        self.state.heartbeat_sent(102.0)  # never answered: its stream broke
        self.clock.now = 102.5
        self.assertTrue(self.state.broke())
        self.assertTrue(self.state.reattaching)
        self.state.check()  # the holder is not told
        self.assertEqual(self.state.deadline, 108.0)
        self.clock.now = 103.5
        self.assertFalse(self.state.resumed(7, sent=103.0, time_left=8.0))
        self.assertFalse(self.state.reattaching)
        self.assertEqual(self.state.reattachments, 1)
        self.assertEqual(self.state.deadline, 111.0)  # the resume's acquire, sent at 103
        self.state.heartbeat_sent(104.0)
        self.clock.now = 104.5
        self.assertFalse(self.state.renewed(8.0))
        self.assertEqual(self.state.deadline, 112.0)  # pairs with 104, not the lost 102
        self.assertIsNone(self.state.reason)

    def test_a_resume_is_capped_at_the_ttl_and_may_bring_the_deadline_earlier(self):
        self.grant()  # deadline 108
        self.state.broke()
        self.clock.now = 101.5
        self.state.resumed(7, sent=101.0, time_left=1000.0)
        self.assertEqual(self.state.deadline, 111.0)
        self.state.broke()
        self.clock.now = 102.5
        self.state.resumed(7, sent=102.0, time_left=2.0)
        self.assertEqual(self.state.deadline, 104.0)

    def test_a_resume_never_revives_a_lease_past_its_deadline(self):
        self.grant()  # deadline 108
        self.state.broke()
        self.clock.now = 108.0
        self.assertTrue(self.state.resumed(7, sent=107.5, time_left=8.0))
        self.assertIs(self.state.reason, Reason.DEADLINE)
        self.assertFalse(self.state.reattaching)

    def test_a_resume_answer_already_past_its_own_deadline_ends_the_lease(self):
        self.grant()  # deadline 108
        self.state.broke()
        self.clock.now = 105.0
        self.assertTrue(self.state.resumed(7, sent=101.0, time_left=3.0))  # 104: past
        self.assertIs(self.state.reason, Reason.DEADLINE)

    def test_a_resume_granted_with_another_token_ends_the_lease(self):
        self.grant()
        self.state.broke()
        self.clock.now = 101.0
        self.assertTrue(self.state.resumed(8, sent=100.8, time_left=8.0))
        self.assertIs(self.state.reason, Reason.BROKEN)

    def test_a_lease_that_ended_is_not_re_attached(self):
        self.grant()
        self.state.end(Reason.REVOKED, "revoked")
        self.assertFalse(self.state.broke())
        self.assertFalse(self.state.reattaching)
        self.assertFalse(self.state.resumed(7, sent=100.8, time_left=8.0))
        self.assertIs(self.state.reason, Reason.REVOKED)


class BreaksTest(unittest.TestCase):
    """Which statuses ending a held lease's stream are a break (re-attach the lease),
    as the Rust ClientLeaser splits them."""

    def test_transport_errors_break_answers_about_the_lease_do_not(self):
        import grpc

        class Error(grpc.RpcError):
            def __init__(self, code):
                self._code = code

            def code(self):
                return self._code

        for code in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "CANCELLED", "ABORTED"):
            self.assertTrue(_core.breaks_stream(Error(getattr(grpc.StatusCode, code))), code)
        for code in ("FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT",
                     "UNAUTHENTICATED", "PERMISSION_DENIED", "OUT_OF_RANGE", "UNIMPLEMENTED"):
            self.assertFalse(_core.breaks_stream(Error(getattr(grpc.StatusCode, code))), code)
        self.assertFalse(_core.breaks_stream(ValueError("not a status")))


class UrlsTest(unittest.TestCase):
    def test_a_list_or_a_comma_separated_string(self):
        a, b = "http://127.0.0.1:1", "https://example.com:8895"
        self.assertEqual(_core.parse_urls(a), [a])
        self.assertEqual(_core.parse_urls(f"{a}, {b}"), [a, b])
        self.assertEqual(_core.parse_urls([a, b]), [a, b])
        self.assertEqual(_core.parse_urls((b,)), [b])
        for bad in ("", " , ", [], "http://a:1,ftp://b", ["http://a:1/path"]):
            with self.assertRaises(ValueError, msg=repr(bad)):
                _core.parse_urls(bad)


if __name__ == "__main__":
    unittest.main()
