"""Fixtures of the template's tests; the helpers themselves are in support.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import workflow_support


def _pyenv_pythons() -> list[str]:
    """The bin folders of pyenv's CPythons: uv does not look into pyenv by itself."""
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    versions = sorted(Path(root, "versions").glob("3.1[1-9]*"), reverse=True)
    return [str(version / "bin") for version in versions if (version / "bin").is_dir()]


def pytest_configure(config):
    # The generated projects need CPython 3.11 to 3.15; where pyenv has them, uv finds them.
    extra = [path for path in _pyenv_pythons() if path not in os.environ["PATH"].split(os.pathsep)]
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ["PATH"]])


@pytest.fixture(scope="session")
def actionlint() -> Path:
    """actionlint, ready to run on a workflow file (workflow_support.lint_workflow)."""
    return workflow_support.install_actionlint()
