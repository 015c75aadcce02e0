"""The edge of both frameworks under real gunicorn, started through entrypoint.sh: requests
past the limits, slow and idle clients, errors as problem documents, input that must not give
a 500, HEAD on the health routes, and reloads and stops that lose no request.

Every client is on loopback, bounded in connections, bytes and time, and stops by itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Self

import pytest

import service_support
from service_support import renders_on_first_use
from support import Service

pytestmark = pytest.mark.slow

RENDERS = {
    "fastapi": {},
    "flask": {"framework": "flask"},
}
FRAMEWORKS = pytest.mark.parametrize("framework", list(RENDERS))
HEADER_TIMEOUT = 3  # HTTP_HEADER_TIMEOUT in these tests (default 10): a shorter wait
MIB = 1024 * 1024
PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}

# A test-only module beside the app: a route that fails, to see how a 500 is answered.
FAILING_APP = """
from my_service.core.app import app

if hasattr(app, "add_api_route"):

    async def fail() -> None:
        raise RuntimeError("this route fails on purpose")

    app.add_api_route("/fail", fail)
else:

    @app.get("/fail")
    def fail() -> None:
        raise RuntimeError("this route fails on purpose")
"""


@pytest.fixture(scope="module")
def projects(copie_session) -> Callable[[str], Path]:
    """One synced render per framework, made on first use, with failing_app.py beside the app."""
    return renders_on_first_use(
        copie_session, RENDERS, "failing_app", dict.fromkeys(RENDERS, FAILING_APP)
    )


def serving(project: Path, tmp_path: Path, *args: str, **env: str) -> AbstractContextManager:
    """The service through ./entrypoint.sh with two workers and a short head deadline."""
    settings = {
        "GUNICORN_WORKERS": "2",
        "HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'edge.sqlite3'}",
        **env,
    }
    return service_support.serving(project, tmp_path, *args, **settings)


def connect(service: Service, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the response on `sock`."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def stream(sock: socket.socket, head: bytes, chunks: Iterator[bytes], limit: int) -> int:
    """Send `head`, then `chunks` until the server answers or `limit` bytes went out; the
    bytes sent. The answer is then waiting to be read."""
    sock.sendall(head)
    sent = len(head)
    for chunk in chunks:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable or sent >= limit:
            break
        try:
            sock.sendall(chunk)
        except OSError:  # the server stopped reading: its answer is waiting
            break
        sent += len(chunk)
    return sent


def assert_no_server_version(headers: dict[str, str]) -> None:
    """No Server header (FastAPI), or gunicorn's, which names no version (Flask)."""
    assert headers.get("server", "gunicorn") == "gunicorn", headers


def problem_of(status: int, headers: dict[str, str], body: bytes) -> dict:
    assert headers["content-type"] == "application/problem+json", headers
    assert_no_server_version(headers)
    problem = json.loads(body)
    assert set(problem) == PROBLEM_KEYS, problem
    assert problem["status"] == status and problem["type"] == "about:blank"
    assert problem["request_id"] == headers["x-request-id"]
    return problem


def worker_rss(service: Service) -> dict[int, int]:
    """Resident memory of each worker, in bytes, by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == service.process.pid:
                status = (stat.parent / "status").read_text()
                found[int(stat.parent.name)] = int(status.split("VmRSS:")[1].split()[0]) * 1024
    return found


def closed_by_the_server(sock: socket.socket, timeout: float = 10) -> bool:
    """Whether the server closes the connection within `timeout` (what it still sends, the
    end of a refused body's answer, is read and dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True
    return True


def just_inside_the_limits(service: Service) -> None:
    """A chunked body of almost 1 MiB (not JSON: a 4xx) and a head of 90 fields, one 4 KB."""
    body = b"a" * (MIB - 1024)
    with connect(service) as sock:
        sock.sendall(
            b"POST /notes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n"
        )
        assert read_response(sock)[0] in (400, 422)  # Flask: not JSON; FastAPI: invalid
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(89)) + b"X-Big: " + b"a" * 4096
    with connect(service) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + fields + b"\r\n\r\n"
        )
        assert read_response(sock)[0] == 200


def repeated(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


# ---------------------------------------------------------------- 1. request limits

ATTACKS = {
    # name: (head, what follows it, bytes at most, expected status)
    "16 MB header field": (
        b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ",
        repeated(b"a" * 65536),
        16 * MIB,
        431,
    ),
    "20,000 header fields": (
        b"GET /health HTTP/1.1\r\nHost: t\r\n",
        (b"X-H%d: v\r\n" % i for i in range(20_000)),
        MIB,
        431,
    ),
    "200 small header fields": (
        b"GET /health HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
        iter(()),
        0,
        431,
    ),
    "9 KB header field": (
        b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        iter(()),
        0,
        431,
    ),
    "16 MB request target": (b"GET /health?q=", repeated(b"a" * 65536), 16 * MIB, 414),
    "200 MB declared body": (
        (
            b"POST /notes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n"
        ),
        repeated(b"a" * 65536),
        200 * MIB,
        413,
    ),
    "200 MB chunked body": (
        (
            b"POST /notes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        ),
        repeated(b"10000\r\n" + b"a" * 65536 + b"\r\n"),
        200 * MIB,
        413,
    ),
}


@FRAMEWORKS
def test_requests_past_the_limits_are_refused_as_they_arrive(projects, tmp_path, framework):
    with serving(projects(framework), tmp_path) as service:
        # The baseline once both workers are there (the master forks them a moment apart),
        # after legitimate requests just inside the limits: the memory a worker takes for its
        # first large request is not what an attack leaves.
        service_support.workers_settle(service, 2)
        for _ in range(4):
            just_inside_the_limits(service)
        before = worker_rss(service)
        trail = []
        for name, (head, rest, limit, status) in ATTACKS.items():
            with connect(service) as sock:
                sent = stream(sock, head, rest, limit)
                answer = read_response(sock)
                assert answer[0] == status, (name, answer)
                problem_of(*answer)
                # Refused as the bytes arrived: long before all of them were sent.
                assert sent < max(limit, 1) / 4 or limit == 0, (name, sent)
                assert closed_by_the_server(sock), name
            # The worker serves on.
            with connect(service) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert read_response(sock)[0] == 200, name
            trail.append((name, worker_rss(service)))
        after = worker_rss(service)
    # The same workers (none crashed or was replaced), none grown by much.
    assert set(after) == set(before), (before, trail)
    grown = {pid: (after[pid] - before[pid]) / MIB for pid in before}
    assert max(grown.values()) < 12, f"grown (MiB) {grown}; before {before}; trail {trail}"
    log = service.output()
    assert "Traceback" not in log and " ERROR " not in log, log


# ---------------------------------------------------------------- 2. slow and idle clients


class Trickle:
    """Connections that send a request head one byte a second, for at most `seconds`; when
    `kept_alive`, as the next request of a connection that had one answered."""

    def __init__(self, service: Service, count: int, seconds: float, kept_alive: bool) -> None:
        self.socks = [connect(service, timeout=2) for _ in range(count)]
        for sock in self.socks if kept_alive else ():
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0] == 200
        self.stop = threading.Event()
        self.seconds = seconds
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        head = b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"X-Slow: " + b"s" * 1000
        deadline = time.monotonic() + self.seconds
        for byte in head:
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
            self.stop.wait(1)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()

    def closed_by_the_server(self) -> int:
        closed = 0
        for sock in self.socks:
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            closed += not data or data.startswith(b"HTTP/1.1 408 ")
        return closed


@FRAMEWORKS
@pytest.mark.parametrize("kept_alive", [False, True], ids=["new", "kept-alive"])
def test_slow_clients_do_not_keep_a_normal_client_from_its_answer(
    projects, tmp_path, framework, kept_alive
):
    slow_clients = 300
    with (
        serving(projects(framework), tmp_path) as service,
        Trickle(service, slow_clients, HEADER_TIMEOUT + 6, kept_alive) as slow,
    ):
        took = []
        for _ in range(6):
            started = time.monotonic()
            with connect(service, timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert read_response(sock)[0] == 200
            took.append(time.monotonic() - started)
            time.sleep(0.5)
        # Past the header deadline, the slow connections are closed (408 when they sent some).
        deadline = time.monotonic() + HEADER_TIMEOUT + 4
        while slow.closed_by_the_server() < slow_clients and time.monotonic() < deadline:
            time.sleep(0.5)
        closed = slow.closed_by_the_server()
    assert max(took) < 2, took
    assert closed == slow_clients, f"{closed} of {slow_clients} slow connections closed"
    log = service.output()
    assert "connection(s) that sent no complete request within 3 s" in log, log
    # Counted, not logged one by one.
    assert log.count("that sent no complete request") <= 4 * 2, log


class Responses:
    """The statuses of the responses on one connection, in order (pipelined ones too)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def status(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            (
                int(line.partition(b":")[2])
                for line in lines
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(self.buffer) < length:
            self._more()
        self.buffer = self.buffer[length:]
        return int(lines[0].split(b" ")[1])

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        self.buffer += data


@FRAMEWORKS
def test_a_kept_alive_connection_takes_requests_in_parts_and_pipelined(
    projects, tmp_path, framework
):
    get = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    note = b'{"text": "sent in parts"}'
    post = b"POST /notes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: %d\r\n\r\n" % len(note)
    with serving(projects(framework), tmp_path) as service, connect(service) as sock:
        responses = Responses(sock)
        sock.sendall(get)
        assert responses.status() == 200
        for part in (get[:7], get[7:20], get[20:]):  # the next head, in three parts
            time.sleep(0.3)
            sock.sendall(part)
        assert responses.status() == 200
        for part in (post, note):  # a body after its head
            time.sleep(0.3)
            sock.sendall(part)
        assert responses.status() == 201
        time.sleep(0.3)
        sock.sendall(get + post + note + get)  # pipelined
        assert [responses.status() for _ in range(3)] == [200, 201, 200]


# ---------------------------------------------------------------- 3. errors are JSON


def ask(service: Service, method: str, target: str, body: bytes = b"", **headers: str):
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        connection.request(method, target, body=body or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def ask_streaming(service: Service, method: str, target: str, body: bytes, **headers: str):
    """ask() for a body the server may refuse before it is all sent: the body goes out in
    pieces until the answer is there (a server that stops reading makes a plain client's send
    fail with a broken pipe, before it could read the answer)."""
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{fields}\r\n"
    pieces = (body[start : start + 65536] for start in range(0, len(body), 65536))
    with connect(service) as sock:
        stream(sock, head.encode(), pieces, len(body))
        return read_response(sock)


@FRAMEWORKS
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_error_is_a_problem_document(projects, tmp_path, framework, log_format):
    cases = [
        (404, "GET", "/nowhere", b"", {}),
        (405, "DELETE", "/health", b"", {}),
        (413, "POST", "/notes", b"x" * (MIB + 1), {"Content-Type": "application/json"}),
        (422, "POST", "/notes", b'{"text": ""}', {"Content-Type": "application/json"}),
        (431, "GET", "/health", b"", {f"X-H{i}": "v" for i in range(150)}),
        (500, "GET", "/fail", b"", {"X-Request-ID": "fail-1"}),
    ]
    with serving(
        projects(framework), tmp_path, "failing_app:app", LOG_FORMAT=log_format
    ) as service:
        for status, method, target, body, headers in cases:
            if len(body) > MIB:  # answered before it is all sent: sent as a careful client does
                answer = ask_streaming(service, method, target, body, **headers)
            else:
                answer = ask(service, method, target, body, **headers)
            assert answer[0] == status, (status, answer)
            problem = problem_of(*answer)
            assert len(answer[2]) < 400, answer  # no input echoed back beyond an excerpt
            if status == 405:
                assert "GET" in answer[1]["allow"]
        assert problem["request_id"] == "fail-1"
        assert service.stop() == 0
    lines = [line for line in service.output().splitlines() if "this route fails" in line]
    assert len(lines) == 1, service.output()  # logged once, as one line
    if log_format == "json":
        entry = json.loads(lines[0])
        assert entry["request_id"] == "fail-1" and entry["level"] == "error"
        assert "RuntimeError: this route fails on purpose" in entry["exception"]
    else:
        assert "request_id=fail-1" in lines[0] and "Traceback" in lines[0]


# ---------------------------------------------------------------- 4. input that must not give a 500

BAD_BODIES = {
    "a JSON list": b"[]",
    "JSON nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "a lone surrogate": b'{"text": "\\ud800"}',
    "a NUL character": b'{"text": "a\\u0000b"}',
    "invalid UTF-8": b'{"text": "\xff\xfe"}',
    "not JSON": b"text=hello",
    "a number for the text": b'{"text": 5}',
}


@FRAMEWORKS
def test_client_input_never_gives_a_500(projects, tmp_path, framework):
    with serving(projects(framework), tmp_path) as service:
        for name, body in BAD_BODIES.items():
            answer = ask(service, "POST", "/notes", body, **{"Content-Type": "application/json"})
            assert 400 <= answer[0] < 500, (name, answer)
            problem_of(*answer)
        assert ask(service, "GET", "/notes/%ff%00?%ff=%00")[0] == 404
    log = service.output()
    assert "Traceback" not in log and " ERROR " not in log, log


# ---------------------------------------------------------------- 5. health answers HEAD


@FRAMEWORKS
def test_health_routes_answer_get_and_head(projects, tmp_path, framework):
    with serving(projects(framework), tmp_path) as service:
        for path in ("/health", "/ready"):
            assert ask(service, "GET", path)[0] == 200
            status, headers, body = ask(service, "HEAD", path)
            assert (status, body) == (200, b""), path
            assert_no_server_version(headers)


# ---------------------------------------------------------------- 6. reload and stop lose nothing


class KeepAliveClients(service_support.ClientThreads):
    """Clients that send requests one after another on kept-alive connections, reconnecting
    after a `Connection: close`, until a connection is refused or they are stopped."""

    def __init__(self, port: int, count: int = 20, max_requests: int = 100_000) -> None:
        super().__init__(count, max_requests)
        self.port = port
        self.refused = 0

    def _client(self) -> None:
        connection = None
        while self._take_one():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    connection.connect()
                except ConnectionRefusedError:
                    with self.lock:
                        self.refused += 1
                    return
            try:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                with self.lock:
                    self.ok += response.status == 200
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.failures.append(repr(error))
                connection.close()
                connection = None


@FRAMEWORKS
def test_reload_and_stop_lose_no_request(projects, tmp_path, framework):
    with (
        serving(projects(framework), tmp_path) as service,
        KeepAliveClients(service.port) as clients,
    ):
        time.sleep(1)
        os.kill(service.process.pid, signal.SIGHUP)  # new workers, the old ones stop
        time.sleep(3)
        served = clients.ok
        time.sleep(1)
        assert clients.ok > served, "nothing served after the reload"
        os.kill(service.process.pid, signal.SIGTERM)
        status = service.process.wait(timeout=40)
        deadline = time.monotonic() + 10
        while clients.refused < len(clients.threads) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert clients.failures == [], clients.failures[:10]
    assert clients.refused == len(clients.threads)
    assert status == 0
    log = service.output()
    assert "Error while closing socket" not in log, log
    assert " ERROR " not in log and "Traceback" not in log, log
