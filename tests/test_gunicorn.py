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
from collections.abc import Callable
from pathlib import Path

import pytest

from docker_support import PREFIX, build, container, need_docker, remove_images
from service_support import (
    Load,
    children,
    renders_on_first_use,
    serving,
    wait_for,
    workers_settle,
)
from support import free_port, http_get, project_env

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

from my_service.core.app import app


@app.get("/slow")
async def slow(seconds: float) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}
""",
    "flask": """
import time

from flask import request

from my_service.core.app import app


@app.get("/slow")
def slow() -> dict[str, float]:
    seconds = float(request.args["seconds"])
    time.sleep(seconds)
    return {"slept": seconds}
""",
}


@pytest.fixture(scope="module")
def projects(copie_session) -> Callable[[str], Path]:
    """One synced render per framework, made on first use, with slow_app.py beside the app."""
    return renders_on_first_use(copie_session, RENDERS, "slow_app", SLOW_APP)


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
