"""The servers under test: how each one starts, when all its workers are up, what it holds."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one configuration with a given worker count on a given port."""

    name: str  # "generated", "recipe" or "raw"
    argv: Callable[[int, int], list[str]]  # (workers, port) -> command line
    cwd: Path
    env: dict[str, str]
    # uvicorn --workers 1 serves from its own process; every other server forks its workers.
    forks_one_worker: bool = True

    def worker_processes(self, workers: int) -> int:
        return workers if workers > 1 or self.forks_one_worker else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health_status(port: int, timeout: float = 2) -> int | None:
    """The status of GET /health, or None when nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found = children(pid)
    for child in list(found):
        found.extend(descendants(child))
    return found


def cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else -1


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _status_kib(pid: int, path: str, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Server:
    """A started server: its process tree, its readiness, its memory; stopped with SIGTERM."""

    def __init__(self, spec: ServerSpec, workers: int, log: Path, cpu: int | None = None) -> None:
        self.spec = spec
        self.workers = workers
        self.port = free_port()
        self.log = log
        argv = spec.argv(workers, self.port)
        if cpu is not None:
            argv = ["taskset", "--cpu-list", str(cpu), *argv]  # taskset execs: same pid
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                argv, cwd=spec.cwd, env=spec.env, stdout=output, stderr=subprocess.STDOUT
            )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def worker_pids(self) -> list[int]:
        if self.spec.worker_processes(self.workers) == 0:
            return [self.process.pid]
        # uvicorn's spawned workers come with multiprocessing's resource tracker: not a worker.
        return [p for p in children(self.process.pid) if "resource_tracker" not in _cmdline(p)]

    def cpu_ticks(self) -> int:
        """CPU time (user and system, in clock ticks) of the master and its workers so far."""
        pids = {self.process.pid, *self.worker_pids()}
        return sum(max(cpu_ticks(pid), 0) for pid in pids)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{self.spec.name} exited {self.process.returncode}; end of its log:\n{tail}"
            )

    def wait_booted(self, timeout: float = 120) -> None:
        """Until every worker runs, none is still busy loading, and /health answers 200."""
        expected = max(self.spec.worker_processes(self.workers), 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            before = {pid: cpu_ticks(pid) for pid in self.worker_pids()}
            time.sleep(0.3)
            after = {pid: cpu_ticks(pid) for pid in self.worker_pids()}
            # A worker that is still importing the app burns CPU; a booted idle one does not.
            quiet = all(0 <= after[pid] - before[pid] <= 1 for pid in after if pid in before)
            settled = len(after) == expected and after.keys() == before.keys() and quiet
            if settled and health_status(self.port) == 200:
                return
        raise RuntimeError(
            f"{self.spec.name} with {self.workers} workers did not boot within {timeout} s "
            f"(log: {self.log})"
        )

    def memory(self) -> dict[str, int]:
        """RSS and PSS in bytes summed over the master (or sole process) and all it started."""
        pids = [self.process.pid, *descendants(self.process.pid)]
        return {
            "rss_bytes": sum(_status_kib(p, "status", "VmRSS") for p in pids) * 1024,
            "pss_bytes": sum(_status_kib(p, "smaps_rollup", "Pss") for p in pids) * 1024,
            "processes": len(pids),
        }

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [self.process.pid, *descendants(self.process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()


def time_to_first_200(spec: ServerSpec, workers: int, log: Path, timeout: float = 120) -> float:
    """Seconds from starting the command to the first 200 on /health."""
    started = time.perf_counter()
    server = Server(spec, workers, log)
    try:
        while time.perf_counter() - started < timeout:
            server.check_alive()
            if health_status(server.port, timeout=1) == 200:
                return time.perf_counter() - started
            time.sleep(0.005)
        raise RuntimeError(f"{spec.name}: no 200 from /health within {timeout} s (log: {log})")
    finally:
        server.stop()
