"""What the tests share: the servers test.sh started, unique keys, a TCP proxy that can
blackhole or cut its connections, and `leases serve` processes of a test's own on the
PostgreSQL test.sh started."""

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

#: The plain server and the one started with a token file (see test.sh).
URL = os.environ.get("LEASES_TEST_URL", "")
AUTH_URL = os.environ.get("LEASES_TEST_AUTH_URL", "")
AUTH_TOKEN = os.environ.get("LEASES_TEST_TOKEN", "")


#: The `leases` binary and a throwaway PostgreSQL (see test.sh), for the tests that start
#: servers of their own.
LEASES_BIN = os.environ.get("LEASES_TEST_BIN", "")
POSTGRES_URL = os.environ.get("LEASES_TEST_POSTGRES_URL", "")

#: LEASES_TEST_REATTACH=0 runs the re-attach tests with re-attaching turned off, to see
#: that each of them fails without it.
REATTACH = os.environ.get("LEASES_TEST_REATTACH", "1") != "0"


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


class _Link:
    """One connection through the proxy: the client's socket and the server's."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket):
        self.sockets = (downstream, upstream)
        self.dead = threading.Event()

    def cut(self) -> None:
        """Resets both sides at once (RST: SO_LINGER 0), with nothing forwarded."""
        self.dead.set()
        for s in self.sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


class Proxy:
    """A TCP proxy in front of `target` (host, port). `blackhole()` stops forwarding in
    both directions while keeping every socket open: to the client the server goes
    silent, with no error and no closed connection. `cut()` resets every connection
    through it at once (both the client and the server see theirs broken, and nothing
    still in the proxy is forwarded); new connections are proxied again, unless
    `cut(refuse=True)`, which resets them too until `admit()`."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.url = f"http://{self.address[0]}:{self.address[1]}"
        self.blackholed = threading.Event()
        self.blackholed_at: float | None = None
        self.refusing = threading.Event()
        self.connections = 0
        self._closed = threading.Event()
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> float:
        """Stops forwarding; returns the instant (time.monotonic) it did."""
        self.blackholed_at = time.monotonic()
        self.blackholed.set()
        return self.blackholed_at

    def cut(self, refuse: bool = False) -> float:
        """Resets every connection (see the class); returns the instant it did."""
        if refuse:
            self.refusing.set()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.cut()
        return time.monotonic()

    def admit(self) -> None:
        """Proxies new connections again after `cut(refuse=True)`."""
        self.refusing.clear()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                _Link(downstream, downstream).cut()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _Link(downstream, downstream).cut()
                continue
            for s in (downstream, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(downstream, upstream)
            with self._lock:
                self._links.append(link)
                self.connections += 1
            threading.Thread(target=self._pump, args=(link, 0, 1), daemon=True).start()
            threading.Thread(target=self._pump, args=(link, 1, 0), daemon=True).start()

    def _pump(self, link: _Link, source_at: int, sink_at: int) -> None:
        source, sink = link.sockets[source_at], link.sockets[sink_at]
        try:
            while not self._closed.is_set() and not link.dead.is_set():
                if self.blackholed.is_set():
                    # Read nothing and send nothing; the sockets stay open.
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready or self.blackholed.is_set() or link.dead.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
        except (OSError, ValueError):  # cut: the sockets were closed under us
            return


#: Runs argv[1:] with PR_SET_PDEATHSIG = SIGKILL (it survives the exec): no server
#: outlives a test run that was killed. (A `preexec_fn` would do the same, but it makes
#: subprocess fork a process that runs gRPC's threads, which gRPC warns about.)
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


class Server:
    """A `leases serve` of a test's own (`--min-ttl 1s`, a free port), on the
    PostgreSQL test.sh started (or on the memory backend). `url` is where it listens;
    `terminate()` (SIGTERM: it drains, handing its leases over on PostgreSQL), `kill()`
    (SIGKILL), `pause()` (SIGSTOP) and `close()` (whatever is left) end it. It dies
    with the thread that started it (PR_SET_PDEATHSIG): start it in the main thread."""

    def __init__(self, memory: bool = False):
        if not LEASES_BIN or not POSTGRES_URL:
            raise RuntimeError(
                "LEASES_TEST_BIN and LEASES_TEST_POSTGRES_URL are unset: run the tests "
                "with clients/python/test.sh"
            )
        flags = () if memory else ("--postgres", POSTGRES_URL)
        self.log = tempfile.NamedTemporaryFile(prefix="leases-serve-", suffix=".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEASES_")}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, LEASES_BIN, "serve"]
            + ["--bind", "127.0.0.1:0", "--min-ttl", "1s", *flags],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        address = None
        end = time.monotonic() + 30
        while address is None:
            for line in self.output().splitlines():
                if line.startswith("leases serve: listening on "):
                    address = line.removeprefix("leases serve: listening on ").strip()
            if address is not None:
                break
            if self.process.poll() is not None or time.monotonic() > end:
                output = self.output()
                self.close()
                raise RuntimeError(f"leases serve did not start:\n{output}")
            time.sleep(0.05)
        self.url = f"http://{address}"

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def terminate(self) -> None:
        """SIGTERM: the server stops gracefully (on PostgreSQL, handing its leases over)."""
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def wait(self, within: float) -> int:
        return self.process.wait(within)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self.log.close()


def wait_for(condition, within: float, every: float = 0.02) -> bool:
    """Polls `condition` until it is true (True) or `within` seconds pass (False)."""
    end = time.monotonic() + within
    while not condition():
        if time.monotonic() >= end:
            return False
        time.sleep(every)
    return True


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)
