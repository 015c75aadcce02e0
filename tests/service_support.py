"""Services of renders under real gunicorn, for the tests that start them: renders made on
first use, a service started through entrypoint.sh, its workers, and a bounded load."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest

from support import Service, free_port, http_get, project_env, render, sync


def renders_on_first_use(
    copie, renders: dict[str, dict], module: str = "", sources: dict[str, str] | None = None
) -> Callable[[str], Path]:
    """One synced render per name of `renders`, made on first use; with `module`, a test-only
    `module`.py beside the app (its source for that name): the service's app plus routes a
    test needs. A positional APP_MODULE given to entrypoint.sh serves it instead of wsgi_app."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            project = render(copie, **renders[name])
            sync(project)
            if module:
                (project / f"{module}.py").write_text(sources[name].lstrip())
            made[name] = project
        return made[name]

    return get


def start(project: Path, tmp_path: Path, *args: str, **env: str) -> Service:
    """./entrypoint.sh ARGS with the render's venv first on PATH; stdout and stderr apart."""
    port = free_port()
    env.setdefault("METRICS_PORT", str(free_port(port)))  # not the default: tests run at once
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


class ClientThreads:
    """Threads running `_client` until stopped or out of requests, with what they counted."""

    def __init__(self, clients: int, max_requests: int) -> None:
        self.ok = 0
        self.failures: list[str] = []
        self.left = max_requests
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        raise NotImplementedError

    def _take_one(self) -> bool:
        """One request more for a thread to make; False when they are all made or stopping."""
        with self.lock:
            if self.stopping.is_set() or self.left == 0:
                return False
            self.left -= 1
            return True

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


class Load(ClientThreads):
    """Threads that GET a URL again and again until stopped or out of requests; counts."""

    def __init__(self, url: str, clients: int = 4, max_requests: int = 2000) -> None:
        super().__init__(clients, max_requests)
        self.url = url

    def _client(self) -> None:
        while self._take_one():
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

    def wait_until(self, count: int, timeout: float = 30) -> None:
        wait_for(lambda: self.ok + len(self.failures) >= count, timeout, f"{count} requests")
