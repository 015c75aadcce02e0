"""Representative renders built into real images by a real Docker engine, and run.

Each image is built once per worker and checked twice: one container lives from start to stop
(healthy on a non-default PORT with a read-only root file system, gunicorn as PID 1 and not
root, migrations before serving, `docker stop` ends it with status 0), and the image's file
system holds the runtime alone, nothing else of the build context and no setuid or setgid
file. Copies of a render, changed, show what a rebuild does: a stale lockfile or an app that
cannot import fails the build, a change of code alone reuses the dependency layer, a failing
migration stops the container before it serves. Builds share the engine's BuildKit cache.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from docker_support import (
    PREFIX,
    Container,
    build,
    build_steps,
    container,
    docker,
    image_file_system,
    need_docker,
    remove_images,
    the_step,
)
from support import free_port, http_get, render

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DEFAULTS = "fastapi-sqlite-py3.14"
# Not in the python:X.Y-slim images (the images without system_packages show it).
SYSTEM_PACKAGE = "libyaml-0-2"
FLASK = "flask-sqlite-py3.11"
IMAGES = {
    DEFAULTS: {},
    FLASK: {"framework": "flask", "python_version": "3.11"},
    "flask-nomigrations-py3.15-packages": {
        "framework": "flask",
        "migrations": False,
        "python_version": "3.15",
        "system_packages": SYSTEM_PACKAGE,
        "build_packages": "build-essential, libyaml-dev",
    },
}
# What build-essential pulls in: no image may hold it (the packages image builds with it).
COMPILERS = {"gcc", "g++", "make", "libc6-dev"}

# Put into every build context, in the places a developer's work tree has secrets and
# clutter; no trace of it may reach an image.
SECRET = f"secret-{uuid.uuid4().hex}"


def answers_of(project: Path) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


@dataclass(frozen=True)
class Image:
    tag: str
    project: Path
    build_log: str

    @property
    def answers(self) -> dict:
        return answers_of(self.project)

    @property
    def package(self) -> str:
        return self.answers["package_name"]

    @property
    def sqlite(self) -> bool:
        return self.answers["migrations"] and self.answers["database"] == "sqlite"


def plant_decoys(project: Path, package: str) -> None:
    """What a developer's work tree holds besides the sources: a .env with a secret (also one
    inside the package), the tests, .git and .venv."""
    (project / ".env").write_text(f"API_TOKEN={SECRET}\n")
    (project / "src" / package / ".env").write_text(f"API_TOKEN={SECRET}\n")
    for folder in ("tests", ".git", ".venv"):
        (project / folder).mkdir(exist_ok=True)
        (project / folder / f"{SECRET}.txt").write_text(SECRET)


class Images:
    """The module's images, each rendered and built on first use, in this worker."""

    def __init__(self, copie, workdir: Path) -> None:
        self.copie = copie
        self.workdir = workdir
        self.built: dict[str, Image] = {}

    def get(self, name: str) -> Image:
        if name not in self.built:
            project = render(self.copie, **IMAGES[name])
            plant_decoys(project, answers_of(project)["package_name"])
            self.built[name] = self._build(project, name)
        return self.built[name]

    def copy_of(self, name: str, label: str) -> Path:
        """A copy of the render (with its decoys) of image `name`, to change and rebuild."""
        self.get(name)
        copy = self.workdir / label
        shutil.copytree(self.built[name].project, copy)
        return copy

    def variant(self, name: str, label: str, change: Callable[[Path, str], None]) -> Image:
        """The image of a copy of render `name` after change(project, package)."""
        project = self.copy_of(name, label)
        change(project, self.built[name].package)
        return self._build(project, label)

    def _build(self, project: Path, label: str) -> Image:
        tag = f"{PREFIX}-{label}"
        result = build(project, tag)
        assert result.returncode == 0, f"docker build of {label} failed:\n{result.stderr[-10000:]}"
        return Image(tag, project, build_log=result.stderr)


@pytest.fixture(scope="module")
def images(copie_session, tmp_path_factory) -> Iterator[Images]:
    need_docker()
    yield Images(copie_session, tmp_path_factory.mktemp("variants"))
    remove_images()


@pytest.fixture(scope="module", params=list(IMAGES))
def image(request, images) -> Image:
    return images.get(request.param)


def start(image: Image) -> AbstractContextManager[Container]:
    """A container of the image as production runs it, on a free port (not the default)."""
    options = ["--health-interval=1s"]  # the Dockerfile's 15 s only makes the tests wait
    if image.sqlite:
        options.append("--volume=/app/data")  # the database, as the README says
    port = free_port()
    assert port != int(image.answers["port"])
    # Two workers are enough to show what the tests check, on a machine that others share.
    return container(image.tag, port, *options, GUNICORN_WORKERS="2")


def layers(tag: str) -> list[str]:
    """The digests of the image's layers, oldest first."""
    listed = docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", tag).stdout
    return json.loads(listed)


def image_config(tag: str) -> dict:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config}}", tag).stdout)


# ---------------------------------------------------------------- a container's life
# One container per image, from start to stop: with pytest 9 xdist cannot keep tests together
# on one worker (its xdist_group marks have no effect), so a shared container would be started
# again by each worker that runs one of its tests.


def assert_gunicorn_is_pid_1_and_not_root(service: Container) -> None:
    pid_1 = service.exec("cat", "/proc/1/cmdline").replace("\0", " ")
    assert "gunicorn" in pid_1, pid_1
    # PID 1 and its children: the master and its workers. Not every process: one that
    # `docker exec` starts (a health check too) can be caught before it takes the image's user.
    status_lines = service.exec(
        "sh", "-c", "grep -E '^(PPid|Uid):' /proc/[0-9]*/status 2>/dev/null || true"
    )
    processes: dict[str, dict[str, str]] = defaultdict(dict)
    line = re.compile(r"^/proc/(\d+)/status:(\w+):\s+(.*)$", re.MULTILINE)
    for pid, key, value in line.findall(status_lines):
        processes[pid][key] = value
    gunicorn = [process for pid, process in processes.items() if "1" in (pid, process.get("PPid"))]
    assert len(gunicorn) == 3, status_lines  # GUNICORN_WORKERS=2
    assert [set(process["Uid"].split()) for process in gunicorn] == [{"10001"}] * 3


def assert_migrated_before_serving(service: Container) -> None:
    logs = service.logs()
    migrated = re.search(r"migrated to 0001", logs)
    listening = logs.find("Listening at:")
    assert migrated and 0 <= migrated.start() < listening, logs
    status, body = http_get(f"{service.url}/notes")  # the table that migration 0001 makes
    assert status == 200, body


def graceful_timeout(service: Container) -> int:
    """Gunicorn's graceful timeout, as gunicorn reads its configuration in the container."""
    settings = service.exec("gunicorn", "--print-config", "--config", "/app/gunicorn.conf.py")
    return int(re.search(r"^graceful_timeout\s*=\s*(\d+)", settings, re.MULTILINE)[1])


def test_the_container_serves_healthy_and_unprivileged_then_stops_cleanly(image):
    readme = (image.project / "README.md").read_text()
    stop_timeout = int(re.search(r"--stop-timeout (\d+)", readme)[1])
    assert image_config(image.tag)["StopSignal"] == "SIGTERM"

    with start(image) as service:  # read-only, on a PORT that is not the image's default
        service.wait_healthy()  # as the image's HEALTHCHECK says
        assert service.state()["Health"]["Log"][-1]["ExitCode"] == 0
        status, body = http_get(f"{service.url}/health")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert_gunicorn_is_pid_1_and_not_root(service)
        if image.answers["migrations"]:
            assert_migrated_before_serving(service)
        assert graceful_timeout(service) < stop_timeout

        started = time.monotonic()
        docker("stop", "--time", str(stop_timeout), service.name, timeout=stop_timeout + 30)
        took = time.monotonic() - started
        state, logs = service.state(), service.logs()

    # A SIGKILL at the end of the stop timeout would show as 137.
    assert (state["ExitCode"], state["OOMKilled"]) == (0, False), logs
    assert took < stop_timeout
    assert "Shutting down: Master" in logs


# ---------------------------------------------------------------- what the image holds


def listed(packages: str) -> set[str]:
    return {name.strip() for name in packages.split(",") if name.strip()}


def test_the_image_holds_the_runtime_and_nothing_else_of_the_build_context(image):
    files = image_file_system(image.tag, SECRET.encode())

    # The runtime: the virtual environment, the system packages; no uv, no compiler, no
    # build packages, no source tree, no apt lists.
    assert f"/app/.venv/lib/python{image.answers['python_version']}/site-packages" in files.paths
    assert "/app/.venv/bin/gunicorn" in files.paths
    assert not [path for path in files.paths if re.search(r"/bin/uvx?$", path)]
    compilers = re.compile(r"/bin/([\w.-]*-)?(gcc|g\+\+|cc|c\+\+|clang)(-[\d.]+)?$")
    assert not [path for path in files.paths if compilers.search(path)]
    assert "libc6" in files.installed_packages  # dpkg's list was read
    system_packages = listed(image.answers["system_packages"]) or {SYSTEM_PACKAGE}
    assert (system_packages <= files.installed_packages) == bool(image.answers["system_packages"])
    assert not (listed(image.answers["build_packages"]) | COMPILERS) & files.installed_packages
    assert files.under("/var/lib/apt/lists") == []
    # No setuid or setgid file (su, mount, passwd, ... of the base image): nothing to gain
    # privileges with, whatever runs in the container.
    assert files.setuid_or_setgid == []
    config = image_config(image.tag)
    assert config["User"] == "10001:10001"
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    assert "PATH=/app/.venv/bin:" in " ".join(config["Env"])

    # Nothing else of the build context: the search sees the application's own files, so it
    # would see the decoys planted beside them.
    app = f"/site-packages/{image.package}/core/app.py"
    assert [path for path in files.paths if path.endswith(app)]
    assert files.paths_holding[SECRET.encode()] == []
    assert not [path for path in files.paths if SECRET in path]
    assert not {"/app/src", "/app/tests", "/app/.env", "/app/.git"} & files.paths


# ---------------------------------------------------------------- rebuilds


def test_a_stale_lockfile_fails_the_build_with_uvs_message(images):
    project = images.copy_of(DEFAULTS, "stale-lockfile")
    pyproject = project / "pyproject.toml"
    before = pyproject.read_text()
    pyproject.write_text(before.replace("dependencies = [\n", 'dependencies = [\n    "six",\n', 1))
    assert pyproject.read_text() != before

    result = build(project, f"{PREFIX}-stale-lockfile")

    assert result.returncode != 0
    dependencies = the_step(build_steps(result.stderr), "--no-install-project")
    message = "The lockfile at `uv.lock` needs to be updated, but `--locked` was provided."
    assert [line for line in dependencies if message in line], result.stderr[-5000:]


def test_a_change_of_code_alone_reuses_the_dependency_layer(images):
    marker = uuid.uuid4().hex

    def change_code(project: Path, package: str) -> None:
        routes = project / "src" / package / "routes.py"
        routes.write_text(f'{routes.read_text()}\nBUILD_MARKER = "{marker}"\n')

    image = images.variant(DEFAULTS, "code-change", change_code)

    steps = build_steps(image.build_log)
    assert "CACHED" in the_step(steps, "--no-install-project")
    # What a push sends again: the layer of the project's own files (and the build check's,
    # which writes nothing), not the dependencies' or any before them.
    before, after = layers(images.get(DEFAULTS).tag), layers(image.tag)
    assert len(before) == len(after)
    assert after[:-2] == before[:-2]
    assert after[-2] != before[-2]
    # The project itself is built and installed again, alone; nothing is downloaded.
    project_sync = the_step(steps, "uv sync", without="--no-install-project")
    installed = [m[1] for line in project_sync if (m := re.match(r"[\d.]+\s+\+ (\S+)", line))]
    assert installed == [f"{image.answers['project_slug']}==0.1.0"], project_sync
    assert not [line for lines in steps.values() for line in lines if "Download" in line]
    shown = docker(
        "run", "--rm", "--network", "host", "--entrypoint", "python", image.tag,
        "-c", f"from {image.package}.routes import BUILD_MARKER; print(BUILD_MARKER)",
    )  # fmt: skip
    assert shown.stdout.strip() == marker


def test_an_app_that_cannot_import_fails_the_build(images):
    project = images.copy_of(FLASK, "import-error")
    routes = next((project / "src").glob("*/routes.py"))
    routes.write_text(
        f"{routes.read_text()}\nimport a_module_that_is_not_installed  # noqa: E402\n"
    )

    result = build(project, f"{PREFIX}-import-error")

    assert result.returncode != 0
    assert "No module named 'a_module_that_is_not_installed'" in result.stderr


FAILING_MIGRATION = '''\
"""A migration that fails."""

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    raise RuntimeError("this migration fails on purpose")


def downgrade() -> None:
    pass
'''


def test_a_failing_migration_stops_the_container_before_it_serves(images):
    def add_failing_migration(project: Path, package: str) -> None:
        versions = project / "src" / package / "migrations" / "versions"
        (versions / "0002_fails.py").write_text(FAILING_MIGRATION)

    image = images.variant(FLASK, "failing-migration", add_failing_migration)

    with start(image) as running:
        status, served = running.wait_exit(timeout=120, watch_port=True)
        logs = running.logs()

    assert status != 0, logs
    assert "this migration fails on purpose" in logs
    assert not served, logs
    assert "Listening at:" not in logs
