"""Representative renders used as a user uses them: locked install, the project's own tests,
and the real service through entrypoint.sh: /health, the Dockerfile's HEALTHCHECK, SIGTERM."""

from __future__ import annotations

import json
import time

import pytest

from support import http_get, render, run, run_healthcheck, running, sync, uv

CASES = {
    "fastapi-sqlite-defaults": {},
    "flask-sqlite": {"framework": "flask", "python_version": "3.11"},
    "fastapi-sqlite-noexample": {"example": False},
    "flask-sqlite-noexample": {"framework": "flask", "example": False},
    "flask-nomigrations-workers2": {"framework": "flask", "migrations": False, "workers": "2"},
    "fastapi-nomigrations-py3.13": {"migrations": False, "python_version": "3.13"},
}

GRACEFUL_TIMEOUT = 25  # gunicorn's default graceful timeout in the rendered settings


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_project_installs_tests_and_serves(copie, case, tmp_path):
    project = render(copie, **CASES[case])
    sync(project)
    run([uv(), "run", "--locked", "pytest", "-q", "-p", "no:cacheprovider"], project)

    with running(project, tmp_path / "service.log", GUNICORN_WORKERS="2") as service:
        status, body = http_get(f"{service.url}/health")
        assert (status, json.loads(body)) == (200, {"status": "ok"})

        healthcheck = run_healthcheck(project, service.port)
        assert healthcheck.returncode == 0, healthcheck.stderr

        started = time.monotonic()
        status = service.stop(timeout=GRACEFUL_TIMEOUT + 5)
        stopped_after = time.monotonic() - started

    assert status == 0, service.output()
    assert stopped_after < GRACEFUL_TIMEOUT / 2, f"SIGTERM took {stopped_after:.1f} s"
    assert "workers: 2 (from GUNICORN_WORKERS)" in service.output()


def test_healthcheck_fails_when_nothing_listens(copie, tmp_path):
    project = render(copie, migrations=False)
    sync(project)
    result = run_healthcheck(project, port=1)
    assert result.returncode == 1
    assert "healthcheck: http://127.0.0.1:1/health" in result.stderr
