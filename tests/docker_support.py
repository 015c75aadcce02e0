"""Docker for the template's tests: find a usable engine, build images, run containers.

Every image and container is named with this process's PREFIX, so that xdist workers and
other test runs on the same engine never touch each other's. The tests remove what they make
and keep the BuildKit cache, which every later build reuses.

All traffic stays on loopback: builds and containers use the host's network (`--network
host`) and containers bind a free port given in PORT; no port is published.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import http_get, need, tool_env

PREFIX = f"template-test-{uuid.uuid4().hex[:12]}"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run the docker client (BuildKit on); with check, fail the test when it fails."""
    result = subprocess.run(
        ["docker", *args],
        check=False,
        env=tool_env(DOCKER_BUILDKIT="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, (
            f"docker {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


@functools.cache
def engine_problem() -> str | None:
    """Why this machine cannot build and run images with BuildKit; None when it can."""
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    try:
        version = docker("version", "--format", "{{.Server.Version}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer (docker version timed out)"
    if version.returncode != 0:
        return f"no Docker engine answers: {version.stderr.strip()[:300]}"
    # An engine that answers may still be unable to build (no BuildKit, no permission).
    probe = f"{PREFIX}-probe"
    try:
        built = subprocess.run(
            ["docker", "build", "--quiet", "--tag", probe, "-"],
            check=False,
            input="FROM scratch\nLABEL purpose=template-test-probe\n",
            env=tool_env(DOCKER_BUILDKIT="1"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return "the Docker engine does not build (a build of an empty image timed out)"
    if built.returncode != 0:
        return f"the Docker engine cannot build with BuildKit: {built.stderr.strip()[:300]}"
    docker("image", "rm", probe, check=False)
    return None


def need_docker() -> None:
    problem = engine_problem()
    need(problem is None, problem or "")


def build(context: Path, tag: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`docker build` of a rendered project; the plain progress log is in stderr."""
    return subprocess.run(
        ["docker", "build", "--network", "host", "--progress", "plain", "--tag", tag, "."],
        check=False,
        cwd=context,
        env=tool_env(DOCKER_BUILDKIT="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def remove_images(prefix: str = PREFIX) -> None:
    """Remove the images whose names start with prefix (the BuildKit cache stays)."""
    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False)
    ours = [name for name in listed.stdout.split() if name.startswith(prefix)]
    if ours:
        docker("image", "rm", "--force", *ours, check=False)


def build_steps(log: str) -> dict[str, list[str]]:
    """The lines of BuildKit's plain progress log, by step title (`[build 4/7] RUN ...`).

    The log interleaves steps as `#N [stage i/n] TITLE`, then `#N 0.31 output`, `#N CACHED`
    or `#N DONE 1.2s` lines; this gathers every line of a step under its title.
    """
    titles: dict[str, str] = {}
    lines: dict[str, list[str]] = defaultdict(list)
    for line in log.splitlines():
        match = re.match(r"#(\d+) (.*)", line)
        if not match:
            continue
        step, text = match.groups()
        if text.startswith("[") and step not in titles:
            titles[step] = text
        elif step in titles:
            lines[titles[step]].append(text)
    return {title: lines[title] for title in titles.values()}


def the_step(steps: dict[str, list[str]], *words: str, without: str = "") -> list[str]:
    """The lines of the one step whose title holds all the words (and not `without`)."""
    found = [
        title
        for title in steps
        if all(word in title for word in words) and not (without and without in title)
    ]
    assert len(found) == 1, f"steps with {words} (not {without!r}): {found} of {list(steps)}"
    return steps[found[0]]


@dataclass
class Container:
    """A container started detached; remove() ends it and its anonymous volumes."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def logs(self) -> str:
        """stdout and stderr, interleaved as the container wrote them."""
        return subprocess.run(
            ["docker", "logs", self.name],
            check=False,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        ).stdout

    def exec(self, *command: str) -> str:
        return docker("exec", self.name, *command).stdout

    def wait_healthy(self, timeout: float = 90) -> None:
        """Until the engine's HEALTHCHECK reports healthy; fail with the logs otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if not state["Running"]:
                pytest.fail(f"the container exited {state['ExitCode']}:\n{self.logs()}")
            if state.get("Health", {}).get("Status") == "healthy":
                return
            time.sleep(0.5)
        pytest.fail(f"not healthy within {timeout} s: {self.state()}\n{self.logs()}")

    def wait_exit(self, timeout: float = 90, watch_port: bool = False) -> tuple[int, bool]:
        """The exit status, and whether anything answered /health meanwhile (watch_port)."""
        served = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if watch_port and not served:
                with contextlib.suppress(OSError):
                    served = http_get(f"{self.url}/health", timeout=0.5)[0] == 200
            state = self.state()
            if not state["Running"]:
                return state["ExitCode"], served
            time.sleep(0.1)
        pytest.fail(f"still running after {timeout} s:\n{self.logs()}")

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)


_containers = 0


@contextlib.contextmanager
def container(image: str, port: int, *options: str, **env: str) -> Iterator[Container]:
    """A container of image on the host's network with PORT=port and a read-only root file
    system (plus a /tmp in memory), as production should run it; removed afterwards.
    Options go to `docker run` (e.g. `--volume /app/data`, `--health-interval 1s`)."""
    global _containers
    _containers += 1
    name = f"{PREFIX}-{_containers}"
    env_options = [f"--env={key}={value}" for key, value in {"PORT": str(port), **env}.items()]
    started = Container(name=name, port=port)
    try:
        docker(
            "run", "--detach", "--name", name, "--network", "host",
            "--read-only", "--tmpfs", "/tmp", *env_options, *options, image,
        )  # fmt: skip
        yield started
    finally:
        started.remove()


@dataclass
class FileSystem:
    """What an image's file system holds, read from `docker export` of a container."""

    paths: set[str]
    paths_holding: dict[bytes, list[str]]
    installed_packages: set[str]
    # The files with a setuid or setgid bit: privileges a process of the image could gain.
    setuid_or_setgid: list[str]

    def under(self, folder: str) -> list[str]:
        return sorted(path for path in self.paths if path.startswith(folder.rstrip("/") + "/"))


def image_file_system(image: str, *needles: bytes) -> FileSystem:
    """Every path of the image, the files whose content holds each needle, the Debian
    packages that dpkg lists as installed, and the setuid or setgid files."""
    created = docker("create", image).stdout.strip()
    paths: set[str] = set()
    holding: dict[bytes, list[str]] = {needle: [] for needle in needles}
    dpkg_status = ""
    setid: list[str] = []
    try:
        with (
            subprocess.Popen(["docker", "export", created], stdout=subprocess.PIPE) as export,
            tarfile.open(fileobj=export.stdout, mode="r|") as archive,
        ):
            for member in archive:
                path = "/" + member.name.removeprefix("./").rstrip("/")
                paths.add(path)
                if not member.isfile():
                    continue
                if member.mode & 0o6000:
                    setid.append(f"{path} ({member.mode:o})")
                content = archive.extractfile(member).read()
                for needle in needles:
                    if needle in content:
                        holding[needle].append(path)
                if path == "/var/lib/dpkg/status":
                    dpkg_status = content.decode()
        assert export.returncode == 0, f"docker export {image} exited {export.returncode}"
    finally:
        docker("rm", "--force", created, check=False)
    return FileSystem(paths, holding, installed_debian_packages(dpkg_status), sorted(setid))


def installed_debian_packages(dpkg_status: str) -> set[str]:
    installed = set()
    for stanza in dpkg_status.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.MULTILINE))
        if fields.get("Status") == "install ok installed":
            installed.add(fields["Package"])
    return installed
