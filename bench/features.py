"""The features of this wave, each measured against the same service without it.

/health at one worker, in the same alternating rounds: the generated service against
- the same with gunicorn's plain worker class (GUNICORN_CMD_ARGS): without the edge's request
  limits and timeouts;
- the same with METRICS_PORT=0, when the render has metrics;
- a render with opentelemetry=true, when the template asks that question: tracing installed
  but off (no exporter), and on at 100 % sampling, exporting over OTLP/HTTP to a local sink;
- FastAPI: gunicorn's own ASGI worker (`--worker-class asgi`), the other way to serve ASGI
  that uses public APIs only (worker_probe.py asks both what they do at the edge).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import projects
from servers import ServerSpec, free_port

# gunicorn's own worker classes, as the recipe would name them: the generated worker without
# its edge.
PLAIN_WORKER = {"fastapi": "uvicorn_worker.UvicornWorker", "flask": "gthread"}
SINK = Path(__file__).with_name("otlp_sink.py")
SINK_PORT = free_port()


class Comparison(NamedTuple):
    """One row of the report: a spec against its baseline spec, on one metric."""

    name: str
    measure: str
    baseline: str
    baseline_label: str
    metric: str = "requests_per_s"
    target: tuple[str, float] | None = None


EDGE = "with the edge (limits, timeouts)"
WORKER = "uvicorn's worker with the edge"
ASGI = "gunicorn's ASGI worker"
METRICS = "with metrics (METRICS_PORT default)"
ROWS = (
    Comparison("generated", EDGE, "no-edge", "plain worker class", target=(">=", 0.97)),
    Comparison("generated", EDGE, "no-edge", "plain worker class", metric="p99_ms"),
    Comparison("generated", EDGE, "no-edge", "plain worker class", metric="cpu_us_per_request"),
    Comparison(
        "generated",
        METRICS,
        "no-metrics",
        "METRICS_PORT=0",
        target=(">=", 0.95),
    ),
    Comparison("generated", METRICS, "no-metrics", "METRICS_PORT=0", metric="cpu_us_per_request"),
    Comparison("generated", WORKER, "gunicorn-asgi", ASGI),
    Comparison("generated", WORKER, "gunicorn-asgi", ASGI, metric="p99_ms"),
    Comparison("tracing-off", "tracing installed, no exporter", "generated", "without tracing"),
    Comparison("tracing-on", "tracing on, 100 % sampled, OTLP to a sink", "generated", "without"),
)


def knows(render: Path, variable: str) -> bool:
    """Whether the render's settings read this environment variable."""
    return any(variable in path.read_text() for path in render.glob("src/*/core/settings.py"))


def specs(
    framework: str, render: Path, workdir: Path, vcs_ref: str, generated_spec: Callable
) -> dict[str, ServerSpec]:
    data = workdir / "features-data"
    data.mkdir(exist_ok=True)
    found = {
        "generated": generated_spec(framework, render, data, migrate=False),
        "no-edge": generated_spec(
            framework,
            render,
            data,
            migrate=False,
            name="no-edge",
            GUNICORN_CMD_ARGS=f"--worker-class {PLAIN_WORKER[framework]}",
        ),
    }
    if framework == "fastapi":
        found["gunicorn-asgi"] = generated_spec(
            framework,
            render,
            data,
            migrate=False,
            name="gunicorn-asgi",
            GUNICORN_CMD_ARGS="--worker-class asgi",
        )
    if knows(render, "METRICS_PORT"):
        found["no-metrics"] = generated_spec(
            framework, render, data, migrate=False, name="no-metrics", METRICS_PORT="0"
        )
    if "opentelemetry" in projects.questions(vcs_ref):
        traced = workdir / "traced"
        projects.copier_copy(traced, vcs_ref, framework=framework, opentelemetry="true")
        projects.sync(traced)
        found["tracing-off"] = generated_spec(
            framework, traced, data, migrate=False, name="tracing-off"
        )
        found["tracing-on"] = generated_spec(
            framework,
            traced,
            data,
            migrate=False,
            name="tracing-on",
            OTEL_TRACES_SAMPLER="always_on",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{SINK_PORT}/v1/traces",
        )
    return found


@contextlib.contextmanager
def otlp_sink(cpu: int | None) -> Iterator[None]:
    """A local OTLP/HTTP endpoint that takes every export and keeps nothing, on wrk's core."""
    argv = [sys.executable, str(SINK), str(SINK_PORT)]
    if cpu is not None:
        argv = ["taskset", "--cpu-list", str(cpu), *argv]
    sink = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        sink.terminate()
        sink.wait(timeout=10)
