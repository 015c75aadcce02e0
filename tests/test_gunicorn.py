"""The rendered gunicorn configuration under real gunicorn, started through entrypoint.sh:
worker counts, bad values, graceful shutdown, a killed worker, recycling, JSON access logs.

Every server listens on 127.0.0.1's free ports; every load is bounded in requests and time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest

from docker_support import PREFIX, build, container, need_docker, remove_images
from support import (
    Service,
    free_port,
    http_get,
    project_env,
    render,
    sync,
)

RENDERS = {
    # The default render: FastAPI, SQLite migrations, workers 'auto'.
    "fastapi": {},
    # A number as the rendered default; no migrations, so the start is gunicorn alone.
    "flask": {"framework": "flask", "migrations": False, "workers": "2"},
}

# Test-only modules written into a render: the service's app plus a route that keeps a
# request in flight. A positional APP_MODULE given to entrypoint.sh overrides wsgi_app.
SLOW_APP = {
    "fastapi": """
import asyncio

from my_service.app import app


@app.get("/slow")
async def slow(seconds: float) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}
""",
    "flask": """
import time

from flask import request

from my_service.app import app


@app.get("/slow")
def slow() -> dict[str, float]:
    seconds = float(request.args["seconds"])
    time.sleep(seconds)
    return {"slept": seconds}
""",
}


@pytest.fixture(scope="module")
def projects(copie_session) -> Callable[[str], Path]:
    """One synced render per framework, made on first use."""
    made: dict[str, Path] = {}

    def get(framework: str) -> Path:
        if framework not in made:
            project = render(copie_session, **RENDERS[framework])
            sync(project)
            (project / "slow_app.py").write_text(SLOW_APP[framework].lstrip())
            made[framework] = project
        return made[framework]

    return get


def start(project: Path, tmp_path: Path, *args: str, **env: str) -> Service:
    """./entrypoint.sh ARGS with the render's venv first on PATH; stdout and stderr apart."""
    port = free_port()
    env.setdefault("METRICS_PORT", str(free_port()))  # not the default: tests run at once
    full_env = project_env(project, PORT=str(port), **env)
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr, (tmp_path / "stdout.log").open("w") as stdout:
        process = subprocess.Popen(
            ["./entrypoint.sh", *args], cwd=project, env=full_env, stdout=stdout, stderr=stderr
        )
    return Service(project=project, port=port, process=process, log=log, env=env)


@contextlib.contextmanager
def serving(project: Path, tmp_path: Path, *args: str, **env: str) -> Iterator[Service]:
    """A healthy service for the block, stopped afterwards if the test left it running (SIGTERM,
    so that the master takes its workers along; SIGKILL after 30 s)."""
    service = start(project, tmp_path, *args, **env)
    try:
        service.wait_healthy()
        yield service
    finally:
        if service.process.poll() is None:
            service.stop(timeout=30)


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (gunicorn's workers, when pid is the master)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def workers_settle(service: Service, expected: int) -> set[int]:
    """Wait until the master has `expected` workers; their pids."""
    wait_for(
        lambda: len(children(service.process.pid)) == expected,
        30,
        f"{expected} workers (have {len(children(service.process.pid))})\n{service.output()}",
    )
    return children(service.process.pid)


def expected_auto_workers(cap: int = 12) -> int:
    """2 x usable CPUs + 1 for this test process: affinity, and a cgroup v2 quota if any."""
    cpus = len(os.sched_getaffinity(0))
    own = Path("/proc/self/cgroup").read_text().strip().rpartition("::")[2]
    directory = Path("/sys/fs/cgroup", own.lstrip("/"))
    while Path("/sys/fs/cgroup") in [directory, *directory.parents]:
        with contextlib.suppress(OSError, ValueError):
            quota, period = (directory / "cpu.max").read_text().split()
            if quota != "max":
                cpus = min(cpus, math.ceil(int(quota) / int(period)))
        if directory == Path("/sys/fs/cgroup"):
            break
        directory = directory.parent
    return min(2 * cpus + 1, cap)


class Load:
    """Threads that GET a URL again and again until stopped or out of requests; counts."""

    def __init__(self, url: str, clients: int = 4, max_requests: int = 2000) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.left = max_requests
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if self.left == 0:
                    return
                self.left -= 1
            try:
                status, _ = http_get(self.url, timeout=10)
                error = None if status == 200 else f"status {status}"
            except (OSError, http.client.HTTPException) as exc:
                # A response cut off by the killed worker is an HTTPException (IncompleteRead).
                error = repr(exc)
            with self.lock:
                if error:
                    self.failures.append(error)
                else:
                    self.ok += 1

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def wait_until(self, count: int, timeout: float = 30) -> None:
        wait_for(lambda: self.ok + len(self.failures) >= count, timeout, f"{count} requests")


# ---------------------------------------------------------------- 1. worker counts


AUTO = None  # 2 x usable CPUs + 1, as this machine gives it

WORKER_CASES = {
    "number": ("flask", {}, 2, "workers: 2 (from the project's default)"),
    "auto": ("fastapi", {}, AUTO, "workers: {n} (auto from the project's default: 2 x"),
    "auto-capped": (
        "fastapi",
        {"GUNICORN_MAX_WORKERS": "2"},
        2,
        "workers: 2 (auto from the project's default",
    ),
    "GUNICORN_WORKERS": (
        "fastapi",
        {"GUNICORN_WORKERS": "3"},
        3,
        "workers: 3 (from GUNICORN_WORKERS)",
    ),
    "WEB_CONCURRENCY": ("flask", {"WEB_CONCURRENCY": "3"}, 3, "workers: 3 (from WEB_CONCURRENCY)"),
    "GUNICORN_WORKERS-wins": (
        "flask",
        {"GUNICORN_WORKERS": "1", "WEB_CONCURRENCY": "3"},
        1,
        "workers: 1 (from GUNICORN_WORKERS)",
    ),
    "GUNICORN_WORKERS-auto": (
        "flask",
        {"GUNICORN_WORKERS": "auto"},
        AUTO,
        "workers: {n} (auto from GUNICORN_WORKERS: 2 x",
    ),
}


@pytest.mark.parametrize("case", list(WORKER_CASES))
def test_worker_count(projects, tmp_path, case):
    framework, env, count, logged = WORKER_CASES[case]
    count = expected_auto_workers() if count is AUTO else count
    with serving(projects(framework), tmp_path, **env) as service:
        assert len(workers_settle(service, count)) == count
        # Settled, and stays so: no worker is failing to boot and being replaced.
        time.sleep(1)
        assert len(children(service.process.pid)) == count
    assert logged.format(n=count) in service.output()


@pytest.mark.parametrize("framework", list(RENDERS))
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GUNICORN_WORKERS", "0"),
        ("WEB_CONCURRENCY", "auto"),
        ("PORT", "http"),
        ("LOG_FORMAT", "xml"),
        ("GUNICORN_MAX_REQUESTS", "-1"),
        ("GUNICORN_TIMEOUT", "30s"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.1,proxy"),
    ],
)
def test_bad_value_stops_the_start_with_one_line(projects, framework, name, value):
    project = projects(framework)
    env = project_env(project, **{name: value})
    result = subprocess.run(
        ["./entrypoint.sh"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    # Checked before the migrations and before gunicorn reads any of it.
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: "), result.stderr
    assert name in lines[0] and repr(value.rpartition(",")[2]) in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


# Counts the processes whose parent is gunicorn's master, pid 1 in the container (the
# slim image has no ps).
COUNT_WORKERS = (
    "import pathlib; print(sum(1 for stat in pathlib.Path('/proc').glob('[0-9]*/stat')"
    " if stat.read_text().rpartition(')')[2].split()[1] == '1'))"
)


@pytest.mark.docker
def test_auto_workers_follow_the_container_cpu_quota(projects):
    need_docker()
    tag = f"{PREFIX}-gunicorn-cpus"
    try:
        built = build(projects("fastapi"), tag)
        assert built.returncode == 0, built.stderr[-4000:]
        with container(tag, free_port(), "--cpus", "1", "--volume", "/app/data") as started:
            wait_for(lambda: "workers: " in started.logs(), 60, "the workers line in the log")
            assert (
                "workers: 3 (auto from the project's default: 2 x 1 usable CPUs "
                "(cgroup CPU quota 1) + 1" in started.logs()
            ), started.logs()
            wait_for(
                lambda: started.exec("python", "-c", COUNT_WORKERS).strip() == "3",
                30,
                "3 worker processes in the container",
            )
    finally:
        remove_images(tag)


# ---------------------------------------------------------------- 2. to 5., both frameworks

FRAMEWORKS = pytest.mark.parametrize("framework", list(RENDERS))
GRACEFUL_TIMEOUT = 10  # set for these tests: long enough for the slow requests, bounds the test


def get_slow(url: str, results: list) -> None:
    try:
        results.append(http_get(url, timeout=GRACEFUL_TIMEOUT + 10))
    except (OSError, http.client.HTTPException) as exc:
        results.append(exc)


def connection_refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False


@FRAMEWORKS
def test_sigterm_lets_requests_in_flight_finish(projects, tmp_path, framework):
    seconds = 3
    with serving(
        projects(framework),
        tmp_path,
        "slow_app:app",
        GUNICORN_WORKERS="2",
        GUNICORN_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT),
    ) as service:
        results: list = []
        clients = [
            threading.Thread(
                target=get_slow, args=(f"{service.url}/slow?seconds={seconds}", results)
            )
            for _ in range(6)
        ]
        for client in clients:
            client.start()
        # The requests reach the workers within milliseconds on loopback; a second is ample.
        time.sleep(1)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)

        wait_for(lambda: connection_refused(service.port), 2, "new connections refused")
        refused_after = time.monotonic() - signalled
        status = service.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
        exited_after = time.monotonic() - signalled
        for client in clients:
            client.join(timeout=10)

    assert refused_after < seconds - 1, "connections were still accepted while requests ran"
    assert [result[0] if isinstance(result, tuple) else result for result in results] == [
        200
    ] * len(clients), results
    assert status == 0, service.output()
    assert seconds - 1 < exited_after < GRACEFUL_TIMEOUT, f"exited after {exited_after:.1f} s"


@FRAMEWORKS
def test_killed_worker_is_replaced_under_load(projects, tmp_path, framework):
    with serving(projects(framework), tmp_path, GUNICORN_WORKERS="2") as service:
        before = workers_settle(service, 2)
        with Load(f"{service.url}/health", clients=4, max_requests=3000) as load:
            load.wait_until(100)
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            wait_for(
                lambda: (
                    len(children(service.process.pid) - before) == 1
                    and len(children(service.process.pid)) == 2
                ),
                30,
                "a new worker in place of the killed one",
            )
            served = load.ok
            load.wait_until(load.ok + len(load.failures) + 200)
        assert load.ok >= served + 150, "the service stopped answering after the kill"
    # A request in the killed worker's hands at the moment of the kill is lost with it: at most
    # one per client (each has one request open at a time). Every other request must succeed.
    assert len(load.failures) <= 4, load.failures
    assert victim not in children(service.process.pid)


@FRAMEWORKS
def test_workers_leave_when_the_master_is_killed(projects, tmp_path, framework):
    # Outside a container nothing else ends them: orphans would serve on and hold the port.
    with serving(
        projects(framework), tmp_path, GUNICORN_WORKERS="2", GUNICORN_TIMEOUT="2"
    ) as service:
        workers = workers_settle(service, 2)
        service.process.kill()
        service.process.wait()
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
            15,
            f"workers {sorted(workers)} gone after their master was killed",
        )
    assert connection_refused(service.port)
    assert "Traceback" not in service.output(), service.output()


@FRAMEWORKS
def test_max_requests_recycles_workers_without_failures(projects, tmp_path, framework):
    with serving(
        projects(framework),
        tmp_path,
        GUNICORN_WORKERS="2",
        GUNICORN_MAX_REQUESTS="50",
        GUNICORN_MAX_REQUESTS_JITTER="10",
    ) as service:

        def booted() -> int:
            return service.output().count("Booting worker with pid")

        # At least 400 requests, and on until two workers were replaced: the master spawns a
        # replacement on its own schedule, and a fast load could end before it did.
        with Load(f"{service.url}/health", clients=4, max_requests=5000) as load:
            load.wait_until(400, timeout=60)
            wait_for(lambda: booted() >= 2 + 2, 60, "two replaced workers")
        assert service.stop() == 0
    assert load.failures == []
    assert load.ok >= 400
    assert booted() >= 2 + 2, service.output()


@FRAMEWORKS
def test_json_logs_carry_the_request_id(projects, tmp_path, framework):
    request_id = f"test-{uuid.uuid4().hex[:12]}"
    with serving(projects(framework), tmp_path, GUNICORN_WORKERS="1", LOG_FORMAT="json") as service:
        status, _ = http_get(f"{service.url}/health", headers={"X-Request-ID": request_id})
        assert status == 200
        request = urllib.request.Request(
            f"{service.url}/health?x=1", headers={"X-Request-ID": "a b"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            generated = response.headers["X-Request-ID"]
        http_get(f"{service.url}/nowhere/%0Aforged")
        assert service.stop(timeout=30) == 0

    access = [json.loads(line) for line in (tmp_path / "stdout.log").read_text().splitlines()]
    other = [json.loads(line) for line in service.output().splitlines() if line.strip()]
    assert other, "nothing logged on stderr"
    by_id = {entry["request_id"]: entry for entry in access}
    entry = by_id[request_id]
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/health", 200)
    assert isinstance(entry["duration_ms"], float)
    assert entry["logger"] == "my_service.access"
    assert generated != "a b" and generated in by_id
    assert by_id[generated]["path"] == "/health"
    assert any(e["path"] == "/nowhere/\nforged" and e["status"] == 404 for e in access), access
