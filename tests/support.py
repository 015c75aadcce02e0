"""What the template's tests share: rendering, running tools, and running the service."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COPIER_YML = yaml.safe_load((ROOT / "copier.yml").read_text())
QUESTIONS = {name: spec for name, spec in COPIER_YML.items() if not name.startswith("_")}
TOOLS = ROOT / ".venv" / "bin"

# Set by .ci/run: a test that needs Docker or PostgreSQL fails instead of skipping without it.
STRICT = os.environ.get("TEMPLATE_TESTS_STRICT", "") == "1"


def need(available: bool, reason: str) -> None:
    """Skip (or, under TEMPLATE_TESTS_STRICT=1, fail) when something the test needs is missing."""
    if available:
        return
    if STRICT:
        pytest.fail(f"{reason} (TEMPLATE_TESTS_STRICT=1 turns this skip into a failure)")
    pytest.skip(reason)


def check_answers(answers: dict) -> None:
    """Refuse answers for questions that do not exist: such a test would prove nothing."""
    unknown = sorted(set(answers) - set(QUESTIONS))
    if unknown:
        raise ValueError(f"not questions of copier.yml: {', '.join(unknown)}")


def choice_values(question: str) -> list[str]:
    choices = QUESTIONS[question].get("choices", [])
    return [str(value) for value in (choices.values() if isinstance(choices, dict) else choices)]


def render(copie, **answers) -> Path:
    """Render the template with these answers (defaults for the rest); the project's path."""
    check_answers(answers)
    result = copie.copy(extra_answers=answers)
    assert result.exit_code == 0, f"copier failed: {result.exception!r}"
    return Path(result.project_dir)


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for uv and the project's tools: no Python downloads, no active venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.update(extra)
    return env


def run(
    args: list[str], cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when it fails."""
    result = subprocess.run(
        args,
        cwd=cwd,
        env=tool_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


def uv() -> str:
    found = shutil.which("uv")
    need(found is not None, "uv is not installed")
    return found


def sync(project: Path) -> None:
    run([uv(), "sync", "--locked", "--quiet"], project)


def free_port(*taken: int) -> int:
    """A port nothing listens on now, and none of `taken` (the kernel may hand out a port it
    just gave, once its socket is closed)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def http_get(url: str, timeout: float = 5, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def port_is_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Service:
    """A service started through the project's entrypoint.sh, as the image starts it."""

    project: Path
    port: int
    process: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the service exited {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError):
                if http_get(f"{self.url}/health", timeout=2)[0] == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"no 200 from /health within {timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a container stop sends it; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def project_env(project: Path, **extra: str) -> dict[str, str]:
    """The environment of a command run as the image runs it: the project's venv first on PATH."""
    env = tool_env(**extra)
    env["PATH"] = f"{project / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def start_service(project: Path, log: Path, **env: str) -> Service:
    """Start ./entrypoint.sh with the project's virtual environment first on PATH."""
    port = int(env.pop("PORT", 0)) or free_port()
    # The master's /metrics on a free port too: services of tests running at once must not
    # meet on the default one.
    env.setdefault("METRICS_PORT", str(free_port(port)))
    full_env = project_env(project, PORT=str(port), **env)
    handle = log.open("w")
    process = subprocess.Popen(
        ["./entrypoint.sh"], cwd=project, env=full_env, stdout=handle, stderr=subprocess.STDOUT
    )
    return Service(project=project, port=port, process=process, log=log, env=env)


@contextlib.contextmanager
def running(project: Path, log: Path, **env: str) -> Iterator[Service]:
    """A healthy service for the duration of the block, stopped (SIGTERM) afterwards."""
    service = start_service(project, log, **env)
    try:
        service.wait_healthy()
        yield service
    finally:
        if service.process.poll() is None:
            service.stop()


def run_healthcheck(project: Path, port: int) -> subprocess.CompletedProcess:
    """The Dockerfile's HEALTHCHECK command, run against 127.0.0.1:port."""
    return subprocess.run(
        dockerfile_healthcheck(project),
        cwd="/",
        env=project_env(project, PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def dockerfile_healthcheck(project: Path) -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    text = (project / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "the Dockerfile has no exec-form HEALTHCHECK"
    return yaml.safe_load(match.group(1))
