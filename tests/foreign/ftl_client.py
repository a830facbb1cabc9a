#!/usr/bin/env python3
"""A foreign client of `leases serve`: Python grpcio speaking FTL's LeaseService.

Run by tests/foreign/run.sh, which installs grpcio, generates the stubs from proto/,
starts the server and passes its address:

    python ftl_client.py 127.0.0.1:PORT

The clients behave as FTL's runtimes do:
- Go-like: open an AcquireLease stream, send the request, read the one answer that
  says the lease is held, then send the same request as a heartbeat every ttl/2
  without ever reading the answers, and finally close its side of the stream;
- JVM-like: one request, one answer, and no renewal at all.

The server must have been started with `--min-ttl 1s` (the TTLs here are short so
that the run is quick). Any failure exits non-zero.
"""

import queue
import sys
import threading
import time
import unittest
import urllib.request

import grpc
from google.protobuf import duration_pb2

from xyz.block.ftl.lease.v1 import lease_pb2, lease_pb2_grpc
from xyz.block.ftl.v1 import ftl_pb2

ADDR = ""  # host:port, from the command line

# Every RPC has a deadline, so that a server that never answers fails the test
# instead of hanging it.
CALL_DEADLINE = 60.0


def request(key, ttl):
    """An AcquireLeaseRequest for `key` (a list of segments) with `ttl` seconds."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(ttl * 1e9))
    return lease_pb2.AcquireLeaseRequest(key=key, ttl=d)


class Requests:
    """A request stream fed by hand; close() half-closes it (FTL's CloseRequest)."""

    _END = object()

    def __init__(self):
        self._queue = queue.Queue()

    def send(self, message):
        self._queue.put(message)

    def close(self):
        self._queue.put(self._END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            yield item


class Stream:
    """One AcquireLease stream."""

    def __init__(self, stub):
        self.requests = Requests()
        self.call = stub.AcquireLease(iter(self.requests), timeout=CALL_DEADLINE)

    def acquire(self, key, ttl):
        """Sends the first request and waits for its answer, as both runtimes do.
        Raises grpc.RpcError when the server ends the stream instead."""
        self.requests.send(request(key, ttl))
        next(self.call)

    def cancel(self):
        self.call.cancel()


class GoLike(Stream):
    """Acquire, then a heartbeat every ttl/2, never reading the answers; close()."""

    def __init__(self, stub, key, ttl):
        super().__init__(stub)
        self.key, self.ttl = key, ttl
        self._stop = threading.Event()
        self._thread = None
        self.heartbeats = 0
        self.last_sent = None

    def acquire(self):
        self.last_sent = time.monotonic()
        super().acquire(self.key, self.ttl)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self):
        while not self._stop.wait(self.ttl / 2):
            self.last_sent = time.monotonic()
            self.requests.send(request(self.key, self.ttl))
            self.heartbeats += 1

    def stop_heartbeats(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self):
        """Stops the heartbeats and half-closes the request stream. Like FTL's Go
        runtime, it does not wait for the server's end of the stream."""
        self.stop_heartbeats()
        self.requests.close()


class JvmLike(Stream):
    """One request, one answer, no renewal; the stream stays open."""

    def __init__(self, stub, key, ttl):
        super().__init__(stub)
        self.key, self.ttl = key, ttl

    def acquire(self):
        super().acquire(self.key, self.ttl)

    def wait_end(self):
        """Blocks until the server ends the stream; returns its error (or None)."""
        try:
            for _ in self.call:
                raise AssertionError("an answer that nobody asked for")
        except grpc.RpcError as e:
            return e
        return None


class FtlClientTest(unittest.TestCase):
    def setUp(self):
        self.channel = grpc.insecure_channel(ADDR)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = lease_pb2_grpc.LeaseServiceStub(self.channel)
        self.streams = []

    def tearDown(self):
        for s in self.streams:
            s.cancel()
        self.channel.close()

    def key(self, *rest):
        return ["module", "pyclient", self.id().rsplit(".", 1)[-1], *rest]

    def go_like(self, key, ttl):
        c = GoLike(self.stub, key, ttl)
        self.streams.append(c)
        return c

    def jvm_like(self, key, ttl):
        c = JvmLike(self.stub, key, ttl)
        self.streams.append(c)
        return c

    def assert_held(self, key):
        """Another client's acquire of `key` ends with RESOURCE_EXHAUSTED."""
        other = self.jvm_like(key, 5.0)
        with self.assertRaises(grpc.RpcError) as caught:
            other.acquire()
        self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(caught.exception.details(), "lease already held")

    def acquire_soon(self, key, within):
        """Another client acquires `key` within `within` seconds (retrying every
        20 ms while it is held). Returns the client and how long it took."""
        started = time.monotonic()
        while True:
            c = self.jvm_like(key, 5.0)
            try:
                c.acquire()
                return c, time.monotonic() - started
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
                if time.monotonic() - started > within:
                    self.fail(f"{key} still held {within}s later: {e.details()}")
                time.sleep(0.02)

    def test_go_like_heartbeats_hold_then_close_releases(self):
        ttl = 4.0
        key = self.key("job")
        holder = self.go_like(key, ttl)
        holder.acquire()
        self.assert_held(key)
        # Held past its TTL on heartbeats alone (answers never read).
        time.sleep(1.5 * ttl)
        self.assertGreaterEqual(holder.heartbeats, 2)
        self.assert_held(key)
        holder.close()
        # Released on close: free within a quarter of the TTL, while its last
        # heartbeat (at most ttl/2 ago) would keep it at least ttl/2 more.
        self.acquire_soon(key, within=ttl / 4)

    def test_half_close_then_cancel_releases(self):
        # FTL's Go runtime releases with CloseRequest (a half-close, written first)
        # and then CloseResponse (a reset). grpcio half-closes from another thread, so
        # give it a moment to reach the wire before the reset, as Go's writes do.
        ttl = 5.0
        key = self.key("job")
        holder = self.go_like(key, ttl)
        holder.acquire()
        self.assert_held(key)
        holder.close()  # stop its heartbeats, half-close; then reset the stream
        time.sleep(0.3)
        holder.cancel()
        self.acquire_soon(key, within=ttl / 4)

    def test_cancel_without_close_keeps_the_key_for_its_window(self):
        # A reset without the half-close is a broken stream (what an L7 proxy sends
        # upstream when its client died): the client may act until the heartbeat
        # window of its last request has run out, so the key is kept until then.
        ttl = 3.0
        key = self.key("job")
        holder = self.go_like(key, ttl)
        holder.acquire()
        holder.stop_heartbeats()
        holder.cancel()
        self.assert_held(key)
        self.acquire_soon(key, within=ttl + 3.0)
        self.assertGreaterEqual(time.monotonic(), holder.last_sent + ttl)

    def test_jvm_like_expires_without_heartbeats(self):
        ttl = 2.0
        key = self.key("job")
        holder = self.jvm_like(key, ttl)
        holder.acquire()
        acquired = time.monotonic()
        self.assert_held(key)
        error = holder.wait_end()
        ended = time.monotonic() - acquired
        self.assertIsNotNone(error, "the stream ended without a status")
        self.assertEqual(error.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, error.details())
        # Not before its TTL (less a margin for the answer's way back, measured
        # from when this client read it), and not much after it.
        self.assertGreaterEqual(ended, 0.75 * ttl)
        self.assertLess(ended, ttl + 3.0)
        # Free at once: the key is released when the stream ends.
        self.acquire_soon(key, within=1.0)

    def test_conflict_is_resource_exhausted(self):
        key = self.key("job")
        self.go_like(key, 5.0).acquire()
        self.assert_held(key)
        # A different key is not affected.
        self.jvm_like(self.key("other"), 5.0).acquire()

    def test_bad_key_is_invalid_argument(self):
        for key in (["nope"], [], ["module"]):
            with self.subTest(key=key):
                with self.assertRaises(grpc.RpcError) as caught:
                    self.jvm_like(key, 5.0).acquire()
                self.assertEqual(
                    caught.exception.code(),
                    grpc.StatusCode.INVALID_ARGUMENT,
                    caught.exception.details(),
                )

    def test_ttl_below_minimum_is_invalid_argument(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.jvm_like(self.key("job"), 0.1).acquire()
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_ping_is_ready(self):
        answer = self.stub.Ping(ftl_pb2.PingRequest(), timeout=CALL_DEADLINE)
        self.assertFalse(answer.HasField("not_ready"), answer.not_ready)

    def test_http_probes(self):
        for path, body in (("/_readiness", b"ready\n"), ("/_liveness", b"alive\n")):
            with self.subTest(path=path):
                with urllib.request.urlopen(f"http://{ADDR}{path}", timeout=10) as r:
                    self.assertEqual(r.status, 200)
                    self.assertEqual(r.read(), body)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: ftl_client.py HOST:PORT")
    ADDR = sys.argv[1]
    unittest.main(argv=sys.argv[:1], verbosity=2)
