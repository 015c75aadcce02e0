"""Migrations through the real entrypoint.sh, on real PostgreSQL and on SQLite.

Renders with migrations are used as their users use them: their own tests, then
./entrypoint.sh with the render's virtual environment on PATH, against fresh databases. The
frameworks alternate between the scenarios, so that each meets PostgreSQL, SQLite and the
start of three replicas at once:

    project's tests        all four renders (PostgreSQL ones against PostgreSQL)
    three replicas         FastAPI on PostgreSQL, Flask on SQLite
    a migration raises     Flask on PostgreSQL, FastAPI on SQLite
    database unreachable   Flask (nothing listens), FastAPI (a server that never answers)
    no wait can cure it    both on SQLite (directory not writable), FastAPI on PostgreSQL
                           (database missing), Flask on PostgreSQL (user missing)
    RUN_MIGRATIONS=0       FastAPI on PostgreSQL, Flask on SQLite
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import postgres_support
import pytest

from service_support import renders_on_first_use
from support import (
    TOOLS,
    Service,
    free_port,
    http_get,
    need,
    port_is_open,
    render,
    run,
    start_service,
    sync,
    uv,
)

pytestmark = pytest.mark.slow

RENDERS = {
    "fastapi-postgresql": {"database": "postgresql"},
    "flask-postgresql": {"framework": "flask", "database": "postgresql"},
    "fastapi-sqlite": {},
    "flask-sqlite": {"framework": "flask"},
}

# Test-only migrations, written into a render's versions/ for one test and removed after it.
MIGRATES_ONCE = '''"""Test only: one row per run; it holds its transaction until the test opens the gate."""
import os
import time
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    runs = op.create_table(
        "migration_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pid", sa.Integer(), nullable=False),
    )
    op.bulk_insert(runs, [{"pid": os.getpid()}])
    gate = Path(os.environ["MIGRATION_GATE"])
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def downgrade():
    op.drop_table("migration_runs")
'''

GOOD_MIGRATION = '''"""Test only: a migration that succeeds."""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    op.create_table("kept", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade():
    op.drop_table("kept")
'''

FAILING_MIGRATION = '''"""Test only: a migration that raises after doing part of its work."""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    op.add_column("kept", sa.Column("added", sa.Integer()))
    raise RuntimeError("migration 0003 fails on purpose")


def downgrade():
    pass
'''

WAIT_SECONDS = 3  # DATABASE_WAIT_SECONDS of the unreachable-database test
CONNECT_TIMEOUT = 5  # DATABASE_TIMEOUT_SECONDS of the render: one attempt's limit
SLACK = 30  # starting Python and its imports on a shared, noisy machine


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def project(copie_session) -> Callable[[str], Path]:
    """A synced render per name of RENDERS, made once per module on first use."""
    return renders_on_first_use(copie_session, RENDERS)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Callable[[], str]]:
    """Makes a fresh PostgreSQL database per call (its URL); drops them all after the run."""
    reason = postgres_support.unreachable_reason()
    made: list[str] = []

    def make() -> str:
        need(not reason, reason)
        name = f"template_test_{uuid.uuid4().hex[:12]}"
        url = postgres_support.create_database(name)
        made.append(name)
        return url

    yield make
    for name in made:
        postgres_support.drop_database(name)


@pytest.fixture
def empty_database(postgres_databases, tmp_path) -> Callable[[str], str]:
    """An empty database of a kind, "postgresql" or "sqlite": its URL."""

    def make(kind: str) -> str:
        if kind == "postgresql":
            return postgres_databases()
        return f"sqlite:///{tmp_path / 'service.sqlite3'}"

    return make


# ---------------------------------------------------------------- helpers


def case(name: str, kind: str):
    """A (render, database) case; PostgreSQL ones carry the postgres mark."""
    marks = [pytest.mark.postgres] if kind == "postgresql" else []
    return pytest.param(name, kind, marks=marks, id=f"{name}-on-{kind}")


def rows(url: str, sql: str) -> list[tuple]:
    if url.startswith("postgresql"):
        return postgres_support.query(url, sql)
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(sql).fetchall()


def tables(url: str) -> set[str]:
    if url.startswith("postgresql"):
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {name for (name,) in rows(url, sql)}


def columns(url: str, table: str) -> set[str]:
    if url.startswith("postgresql"):
        sql = f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
    else:
        sql = f"SELECT name FROM pragma_table_info('{table}')"
    return {name for (name,) in rows(url, sql)}


@contextlib.contextmanager
def migrations_added(project: Path, files: dict[str, str]) -> Iterator[None]:
    """Test-only migration files in the render's versions/ for the block (the install is
    editable: the entrypoint sees them)."""
    versions = next(project.glob("src/*/migrations/versions"))
    paths = [versions / name for name in files]
    for path, text in zip(paths, files.values(), strict=True):
        path.write_text(text)
    try:
        yield
    finally:
        for path in paths:
            path.unlink()
            for compiled in (versions / "__pycache__").glob(f"{path.stem}.*"):
                compiled.unlink()


RUNS_0002 = "Running upgrade 0001 -> 0002"
WAITS = "waiting for the migration lock"


def wait_until_each_met_the_migration(replicas: list[Service], timeout: float) -> None:
    """Until each replica runs migration 0002 or waits for the lock (or has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            replica.process.poll() is not None
            or RUNS_0002 in replica.output()
            or WAITS in replica.output()
            for replica in replicas
        ):
            return
        time.sleep(0.1)


def watch_until_exit(service: Service, timeout: float) -> tuple[int, float, bool]:
    """Poll the service's port until the entrypoint exits: its exit status, the seconds it
    took from now, and whether anything listened on the port (then it is stopped at once)."""
    started = time.monotonic()
    while service.process.poll() is None:
        if port_is_open(service.port):
            return service.stop(), time.monotonic() - started, True
        if time.monotonic() - started > timeout:
            service.stop()
            pytest.fail(f"the entrypoint still runs after {timeout} s:\n{service.output()}")
        time.sleep(0.05)
    return service.process.returncode, time.monotonic() - started, False


def assert_gunicorn_never_started(service: Service, listened: bool) -> None:
    output = service.output()
    assert not listened, f"something listened on port {service.port}:\n{output}"
    assert "Starting gunicorn" not in output, output
    assert "Listening at" not in output, output


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    ("name", "kind"),
    [case(name, "postgresql" if "postgresql" in name else "sqlite") for name in RENDERS],
)
def test_project_tests_migrate_up_and_down(project, name, kind, empty_database):
    """The render's own tests pass: against PostgreSQL through TEST_DATABASE_URL when the
    render uses PostgreSQL, else against their own SQLite files."""
    path = project(name)
    url = empty_database(kind) if kind == "postgresql" else ""
    result = run(
        [uv(), "run", "--locked", "pytest", "-q", "-p", "no:cacheprovider"],
        path,
        TEST_DATABASE_URL=url,
    )
    assert " passed" in result.stdout, result.stdout
    assert "skipped" not in result.stdout, result.stdout
    if url:
        # The tests used this database: they migrated it up and, at the end, down again.
        assert tables(url) == {"alembic_version"}
        assert rows(url, "SELECT version_num FROM alembic_version") == []


@pytest.mark.parametrize(
    ("name", "kind"), [case("fastapi-postgresql", "postgresql"), case("flask-sqlite", "sqlite")]
)
def test_three_replicas_at_once_migrate_once(project, name, kind, empty_database, tmp_path):
    """The migration holds its transaction until every replica has met it (it runs it, or
    waits for the lock), so the others surely start while it is in progress."""
    path = project(name)
    url = empty_database(kind)
    gate = tmp_path / "gate"
    with migrations_added(path, {"0002_migrates_once.py": MIGRATES_ONCE}):
        replicas = [
            start_service(
                path,
                tmp_path / f"replica{i}.log",
                DATABASE_URL=url,
                GUNICORN_WORKERS="1",
                MIGRATION_GATE=str(gate),
            )
            for i in range(3)
        ]
        try:
            wait_until_each_met_the_migration(replicas, timeout=60)
            gate.touch()
            for replica in replicas:
                replica.wait_healthy(timeout=120)
                assert http_get(f"{replica.url}/ready")[0] == 200, replica.output()
        finally:
            gate.touch()
            for replica in replicas:
                replica.stop()

    assert rows(url, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert {"notes", "migration_runs"} <= tables(url)
    assert len(rows(url, "SELECT pid FROM migration_runs")) == 1
    logs = [replica.output() for replica in replicas]
    migrated = [log for log in logs if RUNS_0002 in log]
    assert len(migrated) == 1, "\n----\n".join(logs)
    for log in logs:
        if log not in migrated:
            assert WAITS in log, log
            assert "database is at the newest revision 0002: nothing to migrate" in log, log


@pytest.mark.parametrize(
    ("name", "kind"), [case("flask-postgresql", "postgresql"), case("fastapi-sqlite", "sqlite")]
)
def test_failing_migration_stops_the_start_at_the_last_good_revision(
    project, name, kind, empty_database, tmp_path
):
    path = project(name)
    url = empty_database(kind)
    added = {"0002_good.py": GOOD_MIGRATION, "0003_fails.py": FAILING_MIGRATION}
    with migrations_added(path, added):
        service = start_service(path, tmp_path / "service.log", DATABASE_URL=url)
        status, _, listened = watch_until_exit(service, timeout=90)

    assert status != 0, service.output()
    assert "migration 0003 fails on purpose" in service.output()
    assert_gunicorn_never_started(service, listened)
    assert rows(url, "SELECT version_num FROM alembic_version") == [("0002",)]
    # Migration 0003's transaction was rolled back whole: its DDL is gone too.
    assert tables(url) == {"alembic_version", "notes", "kept"}
    assert columns(url, "kept") == {"id"}


@pytest.mark.parametrize(
    ("name", "database"), [("flask-postgresql", "closed port"), ("fastapi-postgresql", "silent")]
)
def test_unreachable_database_stops_the_start_in_time(project, name, database, tmp_path):
    """A port where nothing listens, or a server that accepts and never answers (a database
    still starting, a firewall that drops): a bounded wait, then one line naming it."""
    path = project(name)
    with socket.socket() as silent:
        if database == "silent":
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            db_port = silent.getsockname()[1]
            limit = WAIT_SECONDS + CONNECT_TIMEOUT + SLACK
        else:
            db_port = free_port()
            limit = WAIT_SECONDS + SLACK
        service = start_service(
            path,
            tmp_path / "service.log",
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{db_port}/unreachable",
            DATABASE_WAIT_SECONDS=str(WAIT_SECONDS),
        )
        status, seconds, listened = watch_until_exit(service, timeout=limit + 30)

    output = service.output()
    assert status == 1, output
    assert seconds < limit, f"took {seconds:.1f} s:\n{output}"
    assert_gunicorn_never_started(service, listened)
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert f"could not reach the database at 127.0.0.1:{db_port} within 3 s" in errors[0]
    assert "Traceback" not in output
    if database == "closed port":
        assert "not reachable yet (attempt 1" in output, output


def incurable_fault(fault: str, tmp_path: Path) -> tuple[str, list[str]]:
    """DATABASE_URL for a start that no wait can cure, and what its one error line must say."""
    if fault == "unwritable directory":
        directory = tmp_path / "data"
        if os.geteuid() == 0:  # root writes everywhere: a file where the directory must be
            directory.write_text("")
        else:
            directory.mkdir(mode=0o555)
        return f"sqlite:///{directory / 'service.sqlite3'}", [
            f"the SQLite directory {directory} is not writable by uid {os.geteuid()}",
            f"mount a volume at {directory} writable by uid {os.geteuid()}",
        ]
    need(not postgres_support.unreachable_reason(), postgres_support.unreachable_reason())
    server = urlsplit(postgres_support.SERVER_URL)
    name = f"template_missing_{uuid.uuid4().hex[:8]}"
    if fault == "missing database":
        return postgres_support.database_url(name), [
            f'the database "{name}" does not exist at',
            f"create it (createdb --host {server.hostname} --port {server.port or 5432}",
        ]
    url = server._replace(netloc=f"{name}@{server.hostname}:{server.port or 5432}").geturl()
    return url, [f'the user "{name}" does not exist at', "create it (createuser"]


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("flask-sqlite", "unwritable directory"),
        ("fastapi-sqlite", "unwritable directory"),
        pytest.param("fastapi-postgresql", "missing database", marks=pytest.mark.postgres),
        pytest.param("flask-postgresql", "missing user", marks=pytest.mark.postgres),
    ],
)
def test_a_start_that_waiting_cannot_cure_fails_at_once(project, name, fault, tmp_path):
    """No retries for DATABASE_WAIT_SECONDS: one line that says what to do, at once."""
    path = project(name)
    url, expected = incurable_fault(fault, tmp_path)
    service = start_service(path, tmp_path / "service.log", DATABASE_URL=url)
    status, seconds, listened = watch_until_exit(service, timeout=60)

    output = service.output()
    assert status == 1, output
    assert seconds < SLACK / 2, f"took {seconds:.1f} s:\n{output}"
    assert_gunicorn_never_started(service, listened)
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], output
    assert "not reachable yet" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("name", "kind"), [case("fastapi-postgresql", "postgresql"), case("flask-sqlite", "sqlite")]
)
def test_run_migrations_0_starts_without_migrating(project, name, kind, empty_database, tmp_path):
    path = project(name)
    url = empty_database(kind)
    service = start_service(path, tmp_path / "service.log", DATABASE_URL=url, RUN_MIGRATIONS="0")
    try:
        service.wait_healthy(timeout=60)
        # Ready: the database answers, though nothing made its tables.
        assert http_get(f"{service.url}/ready")[0] == 200
    finally:
        service.stop()

    output = service.output()
    assert "RUN_MIGRATIONS=0: not migrating" in output
    assert ".migrate:" not in output, output
    assert tables(url) == set()


def test_bad_run_migrations_stops_with_one_line(project, empty_database, tmp_path):
    path = project("flask-sqlite")
    service = start_service(
        path, tmp_path / "service.log", DATABASE_URL=empty_database("sqlite"), RUN_MIGRATIONS="yes"
    )
    status, _, listened = watch_until_exit(service, timeout=30)

    assert status == 2
    assert service.output().splitlines() == [
        "entrypoint: RUN_MIGRATIONS must be 1 or 0 (or true or false), got 'yes'"
    ]
    assert not listened


def test_readme_migration_workflow(project, tmp_path):
    """The README's steps to make a migration and apply it work as written, and the new
    migration file is lint-clean."""
    path = project("flask-sqlite")
    readme = (path / "README.md").read_text()
    steps = re.search(
        r"Make a migration after changing a model.*?```sh\n(.*?)```", readme, re.DOTALL
    )
    assert steps, "the README lost its migration steps"
    commands = [shlex.split(line, comments=True) for line in steps.group(1).splitlines()]
    assert [command[:3] for command in commands] == [
        ["uv", "run", "python"],
        ["uv", "run", "alembic"],
        ["uv", "run", "python"],
        ["uv", "run", "pytest"],
    ]
    url = f"sqlite:///{tmp_path / 'development.sqlite3'}"
    versions = next(path.glob("src/*/migrations/versions"))
    before = set(versions.glob("*.py"))
    try:
        for command in commands:
            run([uv(), *command[1:]], path, DATABASE_URL=url, TEST_DATABASE_URL="")
        (made,) = set(versions.glob("*.py")) - before
        run([str(TOOLS / "ruff"), "check", "--no-cache", str(made)], path)
        run([str(TOOLS / "ruff"), "format", "--no-cache", "--check", str(made)], path)
    finally:
        for new in set(versions.glob("*.py")) - before:
            new.unlink()
    revision = made.name.split("_", 1)[0]
    assert rows(url, "SELECT version_num FROM alembic_version") == [(revision,)]


def test_stop_signal_during_the_migrations_ends_them(project, tmp_path):
    """SIGTERM to the entrypoint while the migration step waits for the database: the step
    is stopped with it (as PID 1 of a container the shell would ignore the signal), and
    gunicorn never starts."""
    path = project("flask-postgresql")
    service = start_service(
        path,
        tmp_path / "service.log",
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/unreachable",
        DATABASE_WAIT_SECONDS="120",
    )
    deadline = time.monotonic() + 60
    while "not reachable yet" not in service.output():
        assert time.monotonic() < deadline, service.output()
        time.sleep(0.2)
    children = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children")
    migration = [int(pid) for pid in children.read_text().split()]
    assert migration, "the migration step is not a child of the entrypoint"

    stopped = time.monotonic()
    status = service.stop(timeout=20)

    assert status != 0
    assert time.monotonic() - stopped < 10
    assert not any(Path(f"/proc/{pid}").exists() for pid in migration), "the migration runs on"
    assert "Starting gunicorn" not in service.output()


TODO_MODEL = """

class Todo(Base):
    __tablename__ = "todos"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
"""


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("framework", "example"),
    [("fastapi", True), ("flask", False)],
    ids=["fastapi", "flask-noexample"],
)
def test_an_autogenerated_migration_runs_on_sqlite_and_postgresql(
    copie_session, empty_database, tmp_path, framework, example
):
    """A model with a boolean and a timestamp default, added as the README says and
    autogenerated against the default SQLite database: the migration is numbered after the
    last, lint-clean, and migrates SQLite and PostgreSQL alike, quietly."""
    path = render(copie_session, framework=framework, database="postgresql", example=example)
    sync(path)
    models = next(path.glob("src/*/models.py"))
    if example:
        text = models.read_text().replace(
            "from sqlalchemy import DateTime, String, func",
            "from sqlalchemy import DateTime, String, false, func",
        )
    else:
        imports = (
            "from datetime import datetime\n\n"
            "from sqlalchemy import DateTime, String, false, func\n"
            "from sqlalchemy.orm import Mapped, mapped_column\n\n"
        )
        text = models.read_text().replace(
            "from .core.db import Base", imports + "from .core.db import Base"
        )
        text = text.replace('\n__all__ = ["Base"]\n', "")
    models.write_text(text + TODO_MODEL)
    package = models.parent.name
    development = f"sqlite:///{tmp_path / 'development.sqlite3'}"
    migrate = [uv(), "run", "python", "-m", f"{package}.core.migrate"]
    run(migrate, path, DATABASE_URL=development)
    run(
        [uv(), "run", "alembic", "revision", "--autogenerate", "-m", "add todos"],
        path,
        DATABASE_URL=development,
    )

    number, down = ("0002", '"0001"') if example else ("0001", "None")
    made = path / "src" / package / "migrations" / "versions" / f"{number}_add_todos.py"
    assert made.is_file(), sorted(made.parent.iterdir())
    source = made.read_text()
    assert f"down_revision: str | Sequence[str] | None = {down}" in source
    assert "server_default=sa.false()" in source and "server_default=sa.func.now()" in source
    assert "sa.text(" not in source, source
    run([str(TOOLS / "ruff"), "check", "--no-cache", str(made)], path)
    run([str(TOOLS / "ruff"), "format", "--no-cache", "--check", str(made)], path)

    for url in (empty_database("postgresql"), f"sqlite:///{tmp_path / 'fresh.sqlite3'}"):
        result = run(migrate, path, DATABASE_URL=url)
        assert f"-> {number}, add todos" in result.stderr, result.stderr
        assert "setup plugin" not in result.stderr, result.stderr
        assert rows(url, "SELECT version_num FROM alembic_version") == [(number,)]
        insert = "INSERT INTO todos (title) VALUES ('first')"
        if url.startswith("postgresql"):
            postgres_support.execute(url, insert)
        else:
            with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
                db.execute(insert)
                db.commit()
        ((done, created_at),) = rows(url, "SELECT done, created_at FROM todos")
        assert done in (False, 0) and created_at is not None, (done, created_at)
