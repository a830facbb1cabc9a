"""A revoke is not sent again to the next server once a server may have taken it.

Two in-process stand-ins for `leases serve` (the generated servicer, nothing else): the
first answers every call only after the client's timeout, the second answers at once and
counts what it is sent. A revoke that ran out of time on the first may still be carried
out there; sent again through the second, it could end a holder granted after the call
was made (one call, two holders ended: the Rust client's review found it, and the Python
client sent it again after DEADLINE_EXCEEDED). `info` still moves on, as it may.
"""

import asyncio
import threading
import time
import unittest
from concurrent import futures

import grpc

import leases_client
from leases_client._proto import leases_pb2, leases_pb2_grpc

TIMEOUT = 0.5


class StandIn(leases_pb2_grpc.LeasesServicer):
    """Answers Revoke and Info after `delay` seconds; counts the calls it is sent."""

    def __init__(self, delay: float):
        self.delay = delay
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def _seen(self, method: str) -> None:
        with self.lock:
            self.calls.append(method)
        time.sleep(self.delay)

    def Revoke(self, request, context):
        self._seen("Revoke")
        return leases_pb2.RevokeResponse(revoked=True)

    def Info(self, request, context):
        self._seen("Info")
        return leases_pb2.InfoResponse()


def serve(stand_in: StandIn):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    leases_pb2_grpc.add_LeasesServicer_to_server(stand_in, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"http://127.0.0.1:{port}"


class RevokeRetryTest(unittest.TestCase):
    def setUp(self):
        self.slow, self.quick = StandIn(4 * TIMEOUT), StandIn(0)
        self.servers = []
        for stand_in in (self.slow, self.quick):
            server, url = serve(stand_in)
            self.servers.append((server, url))
        self.urls = [url for _, url in self.servers]

    def tearDown(self):
        for server, _ in self.servers:
            server.stop(None)

    def check(self):
        self.assertEqual(self.slow.calls, ["Revoke", "Info"])
        self.assertEqual(
            self.quick.calls, ["Info"], "the revoke must not be sent again to the next server"
        )

    def test_blocking_a_revoke_that_ran_out_of_time_is_not_sent_again(self):
        with leases_client.Client(self.urls, timeout=TIMEOUT) as client:
            with self.assertRaises(leases_client.LeasesError):
                client.revoke("/system/review/revoke-retry")
            # Still the first server first; info moves on to the second.
            self.assertIsNone(client.info("/system/review/revoke-retry"))
        self.check()

    def test_async_a_revoke_that_ran_out_of_time_is_not_sent_again(self):
        async def run():
            async with leases_client.AsyncClient(self.urls, timeout=TIMEOUT) as client:
                with self.assertRaises(leases_client.LeasesError):
                    await client.revoke("/system/review/revoke-retry")
                self.assertIsNone(await client.info("/system/review/revoke-retry"))

        asyncio.run(run())
        self.check()


if __name__ == "__main__":
    unittest.main()
