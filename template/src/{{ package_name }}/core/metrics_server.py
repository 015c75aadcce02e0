# Kept by the template: `copier update` changes this file. Your code goes outside core/.
"""GET /metrics on METRICS_PORT, served by the gunicorn master for all its workers.

The workers write their metrics to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode); the master, which outlives every worker, adds them up when it is scraped.
A worker that dies or is recycled keeps its counts in the totals, and its gauges drop out.
gunicorn.conf.py calls these functions from gunicorn's server hooks, in the master; it imports
this module only after it has set PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads when
it is first imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector


class GunicornCollector(Collector):
    """The master's view of its workers, read when /metrics is scraped."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        self.restarts = 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "gunicorn_workers", "Worker processes running now.", value=len(self.arbiter.WORKERS)
        )
        yield CounterMetricFamily(
            "gunicorn_worker_restarts",
            "Workers that exited while the server ran (recycled, timed out, killed or crashed).",
            value=self.restarts,
        )


class _Exporter:
    """The master's HTTP server and what it serves."""

    def __init__(self, arbiter: Any, port: int) -> None:
        self.gunicorn = GunicornCollector(arbiter)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        # process_* and python_info of the master itself.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(self.gunicorn)
        self.server, self.thread = start_http_server(port, registry=registry)


_exporter: _Exporter | None = None


def start(arbiter: Any, port: int) -> None:
    """Serve /metrics on all interfaces in a thread of the master (gunicorn's when_ready)."""
    global _exporter
    try:
        _exporter = _Exporter(arbiter, port)
    except OSError as error:
        arbiter.log.error("metrics: cannot serve on METRICS_PORT=%d: %s", port, error.strerror)
        sys.exit(1)
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    arbiter.log.info(
        "metrics: http://0.0.0.0:%d/metrics (the workers' files in %s)", port, directory
    )


def worker_exited(arbiter: Any, pid: int) -> None:
    """A worker is gone (gunicorn's child_exit): drop its live gauges, count the restart."""
    mark_process_dead(pid)
    # The master closes its listeners first when it stops: exits after that are no restarts.
    if _exporter is not None and arbiter.LISTENERS:
        _exporter.gunicorn.restarts += 1


def close_in_worker() -> None:
    """In a new worker (gunicorn's post_fork): close its copy of the master's metrics socket."""
    if _exporter is not None:
        _exporter.server.socket.close()
