"""Representative renders used as a user uses them: locked install, the project's own tests,
and the real service through entrypoint.sh: /health, the Dockerfile's HEALTHCHECK, SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from support import dockerfile_healthcheck, http_get, render, run, running, sync, tool_env, uv

CASES = {
    "fastapi-sqlite-defaults": {},
    "flask-sqlite": {"framework": "flask", "python_version": "3.11"},
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

        env = tool_env(PORT=str(service.port))
        env["PATH"] = f"{project / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
        healthcheck = subprocess.run(
            dockerfile_healthcheck(project),
            cwd="/",
            env=env,
            capture_output=True,
            timeout=30,
            check=False,
        )
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
    env = tool_env(PORT="1")
    env["PATH"] = f"{project / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        dockerfile_healthcheck(project),
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "healthcheck: http://127.0.0.1:1/health" in result.stderr
