"""What the tests share: the servers test.sh started, unique keys, and a TCP proxy that
can blackhole a connection."""

import os
import select
import socket
import threading
import time
import unittest

#: The plain server and the one started with a token file (see test.sh).
URL = os.environ.get("LEASES_TEST_URL", "")
AUTH_URL = os.environ.get("LEASES_TEST_AUTH_URL", "")
AUTH_TOKEN = os.environ.get("LEASES_TEST_TOKEN", "")


def require_servers(case: unittest.TestCase) -> None:
    if not URL or not AUTH_URL or not AUTH_TOKEN:
        raise RuntimeError(
            "LEASES_TEST_URL, LEASES_TEST_AUTH_URL and LEASES_TEST_TOKEN are unset: "
            "run the tests with clients/python/test.sh"
        )


_counter = 0
_counter_lock = threading.Lock()


def unique_key(case: unittest.TestCase, *rest: str) -> str:
    """A key of this test alone, so that tests never meet on one server."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    name = case.id().rsplit(".", 1)[-1]
    return "/".join(["", "system", "pyclient", f"{name}-{os.getpid()}-{n}", *rest])


class Proxy:
    """A TCP proxy in front of `target` (host, port). `blackhole()` stops forwarding in
    both directions while keeping every socket open: to the client the server goes
    silent, with no error and no closed connection."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.url = f"http://{self.address[0]}:{self.address[1]}"
        self.blackholed = threading.Event()
        self.blackholed_at: float | None = None
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> float:
        """Stops forwarding; returns the instant (time.monotonic) it did."""
        self.blackholed_at = time.monotonic()
        self.blackholed.set()
        return self.blackholed_at

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (downstream, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                if self.blackholed.is_set():
                    # Read nothing and send nothing; the sockets stay open.
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready or self.blackholed.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except OSError:
            return


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)
