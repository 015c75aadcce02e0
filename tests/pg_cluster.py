"""A PostgreSQL cluster of the test's own, on a free port, to freeze and stop: never the shared one.

Made with Debian's postgresql-common (pg_createcluster), trusted on 127.0.0.1, dropped after use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from support import free_port, need


def _version() -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("[0-9]*"), key=lambda p: int(p.name))
    return versions[-1].name if versions else ""


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


@dataclass
class Cluster:
    version: str
    name: str
    port: int

    def _ctl(self, action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", self.version, self.name, action],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def processes(self) -> list[int]:
        """The postmaster and every process it started."""
        data = Path(f"/var/lib/postgresql/{self.version}/{self.name}")
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        return [postmaster, *_children(postmaster)]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP to the postmaster and its processes for the block, SIGCONT after it."""
        stopped = self.processes()
        try:
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A started cluster of this test run; dropped (stopped first) afterwards."""
    need(
        shutil.which("pg_createcluster") is not None and bool(_version()),
        "PostgreSQL's server and postgresql-common (pg_createcluster) are not installed",
    )
    need(os.geteuid() == 0, "pg_createcluster needs root")
    cluster = Cluster(_version(), f"template_faults_{uuid.uuid4().hex[:8]}", free_port())
    subprocess.run(
        [
            "pg_createcluster",
            cluster.version,
            cluster.name,
            "--port",
            str(cluster.port),
            "--",
            "--auth=trust",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        cluster.start()
        yield cluster
    finally:
        for pid in _safe_processes(cluster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        subprocess.run(
            ["pg_dropcluster", "--stop", cluster.version, cluster.name],
            check=False,
            capture_output=True,
            timeout=120,
        )


def _safe_processes(cluster: Cluster) -> list[int]:
    try:
        return cluster.processes()
    except (OSError, ValueError):
        return []
