"""What a FastAPI worker class does at the edge, asked from outside: beside the load figures,
the reasons to choose one (uvicorn's worker with the template's edge, or gunicorn's own ASGI
worker).

For a started server:
- limits: the status of a request line, a header field, a head and a body each past the
  template's default limits (or "closed" when the connection ends without an answer);
- slow heads: SLOW connections each sending a head a byte a second: how long a normal request
  waits meanwhile, and how many of those connections the server still holds after
  HTTP_HEADER_TIMEOUT and a margin;
- reload and stop: kept-alive clients asking /health while the master is sent SIGHUP (new
  workers), then SIGTERM: the requests that failed.

Each probe is bounded in time and in connections.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import statistics
import threading
import time

from servers import Server

SLOW = 100  # connections sending their head a byte a second
HEADER_TIMEOUT = 10  # the template's HTTP_HEADER_TIMEOUT default
MARGIN = 4  # seconds past the timeout before the held connections are counted


def status_of(port: int, request: bytes, timeout: float = 10) -> str:
    """The status line's code of the answer to raw `request`, or what happened instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        try:
            answer = sock.recv(64)
        except OSError as error:
            return type(error).__name__
    parts = answer.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 else "closed"


def limits(port: int) -> dict[str, str]:
    head = b"GET /health HTTP/1.1\r\nHost: t\r\n"
    return {
        "request line of 16 KB": status_of(port, b"GET /" + b"a" * 16384 + b" HTTP/1.1\r\n\r\n"),
        "a 16 KB header field": status_of(port, head + b"X: " + b"a" * 16384 + b"\r\n\r\n"),
        "200 header fields": status_of(
            port, head + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n"
        ),
        "a 64 KB head of 8 KB fields": status_of(
            port, head + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 8000) for i in range(8)) + b"\r\n"
        ),
        "a body of 2 MiB": status_of(
            port,
            b"POST /notes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2097152\r\n\r\n",
        ),
    }


def slow_heads(port: int) -> dict[str, float]:
    """SLOW connections trickle a head; a normal client asks meanwhile."""
    slow = []
    for _ in range(SLOW):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        slow.append(sock)
    waits = []
    deadline = time.monotonic() + HEADER_TIMEOUT + MARGIN
    try:
        while time.monotonic() < deadline:
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"X")
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", "/health")
                connection.getresponse().read()
                waits.append(time.monotonic() - started)
            except OSError:
                waits.append(10.0)
            finally:
                connection.close()
            time.sleep(max(0.0, 1 - (time.monotonic() - started)))
        held = 0
        for sock in slow:
            sock.setblocking(False)
            try:
                sock.recv(1)  # an answer (408) or the close: the server let it go
            except BlockingIOError:
                held += 1  # open, and nothing from the server: still held
            except OSError:
                pass  # reset: let go
    finally:
        for sock in slow:
            sock.close()
    return {
        "normal request, median wait (ms)": round(statistics.median(waits) * 1000, 1),
        "normal request, longest wait (ms)": round(max(waits) * 1000, 1),
        f"slow connections still open after {HEADER_TIMEOUT + MARGIN} s": held,
    }


def reload_and_stop(server: Server, clients: int = 10) -> dict[str, int]:
    """Kept-alive clients through SIGHUP then SIGTERM: the requests that failed."""
    ok, failed, refused = [0], [0], [0]
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        connection = None
        while not stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                try:
                    connection.connect()
                except ConnectionRefusedError:
                    with lock:
                        refused[0] += 1
                    return
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                with lock:
                    ok[0] += response.status == 200
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                with lock:
                    failed[0] += 1
                connection.close()
                connection = None

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        os.kill(server.process.pid, signal.SIGHUP)
        time.sleep(3)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=40)
        deadline = time.monotonic() + 10
        while refused[0] < clients and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    return {"answered": ok[0], "failed": failed[0]}


def probe(server: Server) -> dict:
    """Every probe against one started, booted server; it is stopped by the last one."""
    return {
        "limits": limits(server.port),
        "slow_heads": slow_heads(server.port),
        "reload_and_stop": reload_and_stop(server),
    }
