"""Metrics and traces of renders under real gunicorn, started through entrypoint.sh.

- Metrics: scraped from the master's METRICS_PORT and parsed with prometheus_client's own
  parser; the totals are exact over several workers, also after workers were killed or
  recycled; a dead worker's gauges drop out; the application's port has no /metrics;
  METRICS_PORT=0 serves nothing.
- Traces: a real OTLP/HTTP receiver in the test (decoded with opentelemetry-proto) gets the
  spans of a request, whose parent is the caller's traceparent, and the access and error lines
  carry the same trace id.
- Images: the opentelemetry renders build and run with a read-only root file system, with
  /metrics on METRICS_PORT and spans sent to the receiver.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from docker_support import PREFIX, build, container, need_docker, remove_images
from service_support import (
    Load,
    children,
    renders_on_first_use,
    serving,
    start,
    wait_for,
    workers_settle,
)
from support import free_port, http_get, project_env

FRAMEWORKS = pytest.mark.parametrize("framework", ["fastapi", "flask"])
RENDERS = {
    # Metrics are in every render; these also trace (when an OTEL_* variable says so).
    "fastapi": {"opentelemetry": True},
    "flask": {"framework": "flask", "opentelemetry": True},
}
DURATION = "http_server_request_duration_seconds"

# A test-only module beside the render's app: a slow route, a route that logs an error and
# one whose exception nobody catches. A positional APP_MODULE given to entrypoint.sh wins.
TEST_APP = {
    "fastapi": """
import asyncio
import logging

from my_service.core.app import app


@app.get("/slow")
async def slow(seconds: float) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/logs-an-error")
async def logs_an_error() -> dict[str, str]:
    logging.getLogger("my_service.test").error("something failed")
    return {"status": "logged"}


@app.get("/fails")
async def fails() -> dict[str, str]:
    raise RuntimeError("nobody catches this")
""",
    "flask": """
import logging
import time

from flask import request

from my_service.core.app import app


@app.get("/slow")
def slow() -> dict[str, float]:
    seconds = float(request.args["seconds"])
    time.sleep(seconds)
    return {"slept": seconds}


@app.get("/logs-an-error")
def logs_an_error() -> dict[str, str]:
    logging.getLogger("my_service.test").error("something failed")
    return {"status": "logged"}


@app.get("/fails")
def fails() -> dict[str, str]:
    raise RuntimeError("nobody catches this")
""",
}


@pytest.fixture(scope="module")
def projects(copie_session) -> Callable[[str], Path]:
    """One synced render per framework, made on first use, with test_app.py beside the app."""
    return renders_on_first_use(copie_session, RENDERS, "test_app", TEST_APP)


# ---------------------------------------------------------------- metrics


def scrape(port: int) -> dict[str, list]:
    """The samples of every family on /metrics, by family name, parsed as Prometheus would."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def value(families: dict[str, list], sample_name: str, **labels: str) -> float:
    """The sum of the samples of that name whose labels include these."""
    return sum(
        sample.value
        for samples in families.values()
        for sample in samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


def health_requests(port: int) -> float:
    return value(scrape(port), f"{DURATION}_count", http_route="/health")


def listening_ports(pid: int) -> set[int]:
    """The TCP ports on which the process holds a listening socket."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # st 0A is LISTEN; the local address ends in the port, in hex.
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def get_ignoring_errors(url: str) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        http_get(url, timeout=30)


@FRAMEWORKS
def test_totals_are_exact_after_killed_workers(projects, tmp_path, framework):
    metrics_port = free_port()
    with serving(
        projects(framework),
        tmp_path,
        "test_app:app",
        GUNICORN_WORKERS="3",
        METRICS_PORT=str(metrics_port),
    ) as service:
        workers = workers_settle(service, 3)
        # The master alone serves the metrics; its workers closed their copy of the socket.
        assert listening_ports(service.process.pid) == {service.port, metrics_port}
        assert all(listening_ports(pid) == {service.port} for pid in workers)
        before = health_requests(metrics_port)  # wait_healthy's requests

        with Load(f"{service.url}/health", clients=6, max_requests=600) as load:
            load.wait_until(600)
        assert (load.ok, load.failures) == (600, [])
        families = scrape(metrics_port)
        assert value(families, f"{DURATION}_count", http_route="/health") == before + 600
        assert value(families, f"{DURATION}_bucket", http_route="/health", le="+Inf") == (
            before + 600
        )
        assert value(families, "gunicorn_workers") == 3

        # A request in flight is active; when every worker is killed, its gauge drops out.
        slow = threading.Thread(
            target=get_ignoring_errors, args=(f"{service.url}/slow?seconds=20",)
        )
        slow.start()
        wait_for(
            lambda: value(scrape(metrics_port), "http_server_active_requests") == 1,
            10,
            "one active request",
        )
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: len(children(service.process.pid) - workers) == 3,
            30,
            "three new workers",
        )
        slow.join(timeout=30)
        families = scrape(metrics_port)
        assert value(families, "http_server_active_requests") == 0
        assert value(families, f"{DURATION}_count", http_route="/health") == before + 600
        assert value(families, "gunicorn_worker_restarts_total") == 3
        assert value(families, "gunicorn_workers") == 3

        with Load(f"{service.url}/health", clients=6, max_requests=300) as load:
            load.wait_until(300)
        assert (load.ok, load.failures) == (300, [])
        assert health_requests(metrics_port) == before + 900
    assert service.process.returncode == 0, service.output()


@FRAMEWORKS
def test_totals_are_exact_while_workers_are_recycled(projects, tmp_path, framework):
    metrics_port = free_port()
    with serving(
        projects(framework),
        tmp_path,
        GUNICORN_WORKERS="2",
        GUNICORN_MAX_REQUESTS="40",
        GUNICORN_MAX_REQUESTS_JITTER="5",
        METRICS_PORT=str(metrics_port),
    ) as service:

        def booted() -> int:
            return service.output().count("Booting worker with pid")

        workers_settle(service, 2)
        before = health_requests(metrics_port)
        # On until three workers were replaced: the master does it on its own schedule.
        with Load(f"{service.url}/health", clients=4, max_requests=5000) as load:
            load.wait_until(300, timeout=60)
            wait_for(lambda: booted() >= 2 + 3, 60, "three replaced workers")
        assert load.failures == []
        workers_settle(service, 2)
        expected = before + load.ok
        wait_for(lambda: health_requests(metrics_port) == expected, 5, f"{expected} requests")
        # FastAPI's workers write their active requests' gauge within 50 ms of a change.
        wait_for(
            lambda: value(scrape(metrics_port), "http_server_active_requests") == 0,
            5,
            "no active request",
        )
        families = scrape(metrics_port)
        replaced = booted() - 2

    assert value(families, f"{DURATION}_count", http_route="/health") == expected
    assert value(families, "gunicorn_worker_restarts_total") == replaced >= 3
    assert value(families, "http_server_active_requests") == 0


@FRAMEWORKS
def test_metrics_are_not_on_the_applications_port(projects, tmp_path, framework):
    metrics_port = free_port()
    with serving(projects(framework), tmp_path, METRICS_PORT=str(metrics_port)) as service:
        assert http_get(f"{service.url}/metrics")[0] == 404
        families = scrape(metrics_port)
        # The master's process metrics and the route of the app's own 404.
        assert value(families, "process_resident_memory_bytes") > 0
        assert value(families, f"{DURATION}_count", http_route="", http_response_status_code="404")
        logged = re.search(
            r"metrics: http://0\.0\.0\.0:(\d+)/metrics \(.* in (\S+)\)", service.output()
        )
        assert logged and int(logged[1]) == metrics_port, service.output()
        metrics_dir = Path(logged[2])
        assert metrics_dir.is_dir() and str(metrics_dir).startswith("/dev/shm/")
        assert service.stop() == 0
    assert not metrics_dir.exists(), "the master removes its metrics directory at exit"


def test_a_metrics_port_in_use_stops_the_start(projects, tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = start(projects("flask"), tmp_path, METRICS_PORT=str(port))
        assert service.process.wait(timeout=60) == 1
    assert f"metrics: cannot serve on METRICS_PORT={port}: Address already in use" in (
        service.output()
    )
    assert "Traceback" not in service.output()


@FRAMEWORKS
def test_metrics_port_0_serves_no_metrics(projects, tmp_path, framework):
    with serving(projects(framework), tmp_path, METRICS_PORT="0", GUNICORN_WORKERS="2") as service:
        workers_settle(service, 2)
        assert listening_ports(service.process.pid) == {service.port}
        assert http_get(f"{service.url}/metrics")[0] == 404
    assert "metrics: " not in service.output()


def test_metrics_port_equal_to_port_stops_the_start(projects, tmp_path):
    port = free_port()
    project = projects("fastapi")
    result = subprocess.run(
        ["./entrypoint.sh"],
        cwd=project,
        env=project_env(project, PORT=str(port), METRICS_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"configuration error: METRICS_PORT must differ from PORT ({port}): the metrics are "
        "served apart from the application (or 0 turns them off)"
    )


# ---------------------------------------------------------------- traces


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: decodes every POST /v1/traces."""

    def __init__(self) -> None:
        self.spans: list = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.paths.append(self.path)
                for resource_spans in request.resource_spans:
                    service = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }["service.name"]
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend((service, span) for span in scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def of_trace(self, trace_id: str) -> list:
        return [(s, span) for s, span in self.spans if span.trace_id.hex() == trace_id]


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
OTEL_ENV = {
    # Batches go out every 100 ms instead of 5 s.
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_SERVICE_NAME": "notes-test",
    "LOG_FORMAT": "json",
    "GUNICORN_WORKERS": "2",
}


def check_request_trace(receiver: OtlpReceiver, trace_id: str, route: str) -> None:
    """The server span of the request continues the caller's, and the queries are its children."""
    wait_for(
        lambda: any(span.kind == span.SPAN_KIND_SERVER for _, span in receiver.of_trace(trace_id)),
        20,
        f"the server span of trace {trace_id} (received: {len(receiver.spans)} spans)",
    )
    spans = receiver.of_trace(trace_id)
    (server,) = [span for _, span in spans if span.kind == span.SPAN_KIND_SERVER]
    assert server.name == f"GET {route}"
    assert server.parent_span_id.hex() == PARENT_ID
    assert {service for service, _ in spans} == {"notes-test"}
    queries = [span for _, span in spans if span.name.startswith("SELECT")]
    assert queries and all(q.parent_span_id == server.span_id for q in queries), spans


@FRAMEWORKS
def test_spans_reach_an_otlp_receiver_and_join_the_log_lines(projects, tmp_path, framework):
    with (
        otlp_receiver() as receiver,
        serving(
            projects(framework),
            tmp_path,
            "test_app:app",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
            METRICS_PORT=str(free_port()),
            **OTEL_ENV,
        ) as service,
    ):
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        assert http_get(f"{service.url}/notes", headers=headers)[0] == 200
        check_request_trace(receiver, TRACE_ID, "/notes")
        error_trace = TRACE_ID[::-1]
        error_headers = {"traceparent": f"00-{error_trace}-{PARENT_ID}-01"}
        assert http_get(f"{service.url}/logs-an-error", headers=error_headers)[0] == 200
        assert service.stop() == 0

    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    access = [json.loads(line) for line in (tmp_path / "stdout.log").read_text().splitlines()]
    (notes,) = [entry for entry in access if entry["path"] == "/notes"]
    assert notes["trace_id"] == TRACE_ID
    # Every access line has a trace id; /health's (wait_healthy) are new traces.
    assert all(len(entry["trace_id"]) == 32 for entry in access), access
    errors = [json.loads(line) for line in service.output().splitlines() if "something" in line]
    assert [(e["message"], e["trace_id"]) for e in errors] == [("something failed", error_trace)]


@FRAMEWORKS
def test_an_unhandled_exception_is_one_line_with_the_request_and_trace_ids(
    projects, tmp_path, framework
):
    with (
        otlp_receiver() as receiver,
        serving(
            projects(framework),
            tmp_path,
            "test_app:app",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
            METRICS_PORT=str(free_port()),
            **OTEL_ENV,
        ) as service,
    ):
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "fails-1"}
        assert http_get(f"{service.url}/fails", headers=headers)[0] == 500
        assert service.stop() == 0

    lines = [json.loads(line) for line in service.output().splitlines() if line.startswith("{")]
    failures = [entry for entry in lines if "nobody catches this" in json.dumps(entry)]
    assert len(failures) == 1, failures
    (failure,) = failures
    assert "RuntimeError: nobody catches this" in failure["exception"]
    assert (failure["trace_id"], failure.get("request_id")) == (TRACE_ID, "fails-1"), failure


@FRAMEWORKS
def test_without_otel_variables_nothing_is_traced(projects, tmp_path, framework):
    with serving(
        projects(framework), tmp_path, LOG_FORMAT="json", METRICS_PORT=str(free_port())
    ) as service:
        assert http_get(f"{service.url}/health")[0] == 200
        assert service.stop() == 0
    access = [json.loads(line) for line in (tmp_path / "stdout.log").read_text().splitlines()]
    assert access and not any("trace_id" in entry for entry in access)


# ---------------------------------------------------------------- images


@pytest.mark.docker
@pytest.mark.slow
@FRAMEWORKS
def test_the_image_serves_metrics_and_sends_spans_with_a_read_only_root(projects, framework):
    need_docker()
    tag = f"{PREFIX}-observability-{framework}"
    try:
        built = build(projects(framework), tag)
        assert built.returncode == 0, built.stderr[-6000:]
        port, metrics_port = free_port(), free_port()
        with (
            otlp_receiver() as receiver,
            container(
                tag,
                port,
                "--volume",
                "/app/data",
                METRICS_PORT=str(metrics_port),
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
                **OTEL_ENV,
            ) as started,
        ):
            started.wait_healthy()
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            assert http_get(f"{started.url}/notes", headers=headers)[0] == 200
            check_request_trace(receiver, TRACE_ID, "/notes")
            families = scrape(metrics_port)
            assert value(families, f"{DURATION}_count", http_route="/notes") == 1
            # The image's HEALTHCHECK asks /health, and every request of it counts.
            assert value(families, f"{DURATION}_count", http_route="/health") >= 1
            assert value(families, "gunicorn_workers") == 2
            logs = started.logs()
        assert f'"trace_id": "{TRACE_ID}"' in logs, logs
    finally:
        remove_images(tag)
