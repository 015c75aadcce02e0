"""Every render owns as little as it can: other packages' public APIs only, no upper bound that
keeps out a release, and a strict type check that passes.

The renders of test_render's matrix are installed (their locked dependencies) and checked with
their own interpreters, so that the checks see the versions a project would run.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from test_render import MATRIX

from support import ROOT, need, render, run, sync, uv

SCAN = ROOT / "tests" / "public_apis.py"


@pytest.fixture(params=list(MATRIX), scope="module")
def installed(request, copie_session) -> Path:
    project = render(copie_session, **MATRIX[request.param])
    sync(project)
    return project


def scan(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(project / ".venv" / "bin" / "python"), str(SCAN), str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_no_render_uses_another_packages_private_names(installed):
    result = scan(installed)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


PLANTED = """
from gunicorn.http import wsgi
from gunicorn.workers import gthread
from uvicorn._compat import asyncio_run


class Planted(gthread.ThreadWorker):
    def _cap_keepalive(self, deadline):
        return deadline


def planted(child):
    return child._sum, getattr(child, "_buckets"), asyncio_run


wsgi.Response = Planted
"""


@pytest.mark.slow
def test_the_scan_finds_each_kind_of_private_use(copie_session, tmp_path):
    project = render(copie_session)  # FastAPI: uvicorn and gunicorn installed
    sync(project)
    planted = next((project / "src").iterdir()) / "planted.py"
    planted.write_text(PLANTED)
    result = scan(project)
    assert result.returncode == 1
    found = result.stdout.splitlines()
    kinds = [
        "imports from the private module uvicorn._compat",
        "overrides the private method ThreadWorker._cap_keepalive",
        "uses the private attribute _sum",
        "uses the private attribute _buckets by name",
        "replaces gunicorn.http.wsgi.Response",
    ]
    for kind in kinds:
        assert [line for line in found if kind in line and "planted.py" in line], (kind, found)
    assert all("planted.py" in line for line in found), found


@pytest.mark.slow
def test_the_strict_type_check_passes(installed):
    result = run([uv(), "run", "--locked", "mypy"], installed)
    assert "Success: no issues found" in result.stdout
    config = tomllib.loads((installed / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True and config["files"] == ["src", "gunicorn.conf.py"]


def newest_release(name: str) -> Version | None:
    """The newest release of a package on PyPI (pre-releases aside); None offline."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=20) as answer:
            releases = json.load(answer)["releases"]
    except (OSError, urllib.error.URLError):
        return None
    versions = [
        Version(version)
        for version, files in releases.items()
        if files and not all(file.get("yanked") for file in files)
    ]
    stable = [version for version in versions if not version.is_prerelease]
    return max(stable or versions)


def bounded(project: Path) -> list[Requirement]:
    """The requirements of a render's pyproject.toml that have an upper bound."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    texts = [
        *pyproject["project"]["dependencies"],
        *pyproject["dependency-groups"]["dev"],
        *pyproject["build-system"]["requires"],
    ]
    return [
        requirement
        for requirement in map(Requirement, texts)
        if any(spec.operator in ("<", "<=", "==", "~=", "===") for spec in requirement.specifier)
    ]


def kept_out(requirement: Requirement) -> Version | None:
    """The newest release of the package when the requirement keeps it out, else None."""
    newest = newest_release(requirement.name)
    need(newest is not None, "PyPI cannot be reached: the newest releases are unknown")
    return None if requirement.specifier.contains(newest, prereleases=True) else newest


def test_no_upper_bound_keeps_out_the_newest_release(copie_session):
    """Each bound a render names lets in the newest release on the package index, and says
    beside it which test shows that the next release breaks (the generated tests, not a
    bound, are what catch a release that breaks)."""
    for name, answers in MATRIX.items():
        project = render(copie_session, **answers)
        lines = (project / "pyproject.toml").read_text().splitlines()
        for requirement in bounded(project):
            assert kept_out(requirement) is None, f"{name}: {requirement} keeps out a release"
            (index,) = [i for i, line in enumerate(lines) if f'"{requirement}"' in line]
            assert "test_" in lines[index - 1] + lines[index], f"{name}: {requirement}: no reason"


def test_a_bound_that_keeps_out_a_release_is_found():
    found = kept_out(Requirement("gunicorn<27"))
    assert found is not None and found >= Version("27")
    assert kept_out(Requirement("gunicorn>=27")) is None
