"""The projects under test: the template's render, and the baselines' virtual environments."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Copier from the environment that runs the bench: the template's own dev tools.
COPIER = Path(sys.executable).parent / "copier"
GIT_IDENTITY = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for uv, copier and git: no Python downloads, no active venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.update(extra)
    return env


def run(argv: list[str | Path], cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def template_commit() -> str:
    return run(["git", "rev-parse", "HEAD"], ROOT).strip()


def copier_copy(destination: Path, vcs_ref: str, **answers: str) -> float:
    """Render the template with these answers (defaults for the rest); the wall time in s.

    The time includes the template's task after a copy (`uv lock` of the new project).
    """
    if not COPIER.exists():
        sys.exit(f"bench: {COPIER} is missing; run the bench with `uv run --group bench ...`")
    data = [item for name, value in answers.items() for item in ("-d", f"{name}={value}")]
    argv = [COPIER, "copy", "--trust", "--defaults", "--quiet", "--vcs-ref", vcs_ref, *data]
    started = time.perf_counter()
    run([*argv, ROOT, destination], destination.parent)
    return time.perf_counter() - started


def copier_update_time(project: Path, vcs_ref: str) -> float:
    """Wall time of `copier update` of a committed, clean render to the same template version.

    Copier renders the old and the new version, merges, then runs the template's update task
    (`uv lock --check`).
    """
    run(["git", "init", "--quiet"], project)
    run(["git", "add", "--all"], project)
    run(["git", *GIT_IDENTITY, "commit", "--quiet", "-m", "Start from the template"], project)
    argv = [COPIER, "update", "--trust", "--defaults", "--quiet", "--vcs-ref", vcs_ref]
    started = time.perf_counter()
    run(argv, project)
    return time.perf_counter() - started


def questions(vcs_ref: str) -> set[str]:
    """The questions of the template's copier.yml at this version ('HEAD': the working tree)."""
    if vcs_ref == "HEAD":
        text = (ROOT / "copier.yml").read_text()
    else:
        text = run(["git", "show", f"{vcs_ref}:copier.yml"], ROOT)
    return {name for name in yaml.safe_load(text) if not name.startswith("_")}


def sync(project: Path) -> Path:
    """`uv sync --locked` in the render; the Python of its virtual environment.

    As in the image: without the development tools (their packages change what some imports
    load), compiled to bytecode (without it, and with PYTHONDONTWRITEBYTECODE set, as on many
    machines, every start would compile the packages it imports).
    """
    run(["uv", "sync", "--locked", "--no-dev", "--quiet", "--compile-bytecode"], project)
    return project / ".venv" / "bin" / "python"


def runtime_dependencies(project: Path) -> list[str]:
    """The project's runtime requirements as named in pyproject.toml, without versions."""
    declared = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    return [re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", item).group(0) for item in declared]


def baseline_venv(project: Path, destination: Path, requirements: list[str]) -> Path:
    """A uv venv with the render's Python and `requirements`, at the versions the render locked.

    The versions come from `uv export` of the render's lockfile as constraints: a package the
    render also has gets the same version; the baseline gets nothing else the render has.
    """
    constraints = destination.with_suffix(".constraints.txt")
    locked = run(
        ["uv", "export", "--locked", "--no-dev", "--no-hashes", "--no-emit-project", "--quiet"],
        project,
    )
    constraints.write_text(locked)
    render_python = project / ".venv" / "bin" / "python"
    run(["uv", "venv", "--quiet", "--python", render_python, destination], project)
    python = destination / "bin" / "python"
    run(
        [
            *("uv", "pip", "install", "--quiet", "--compile-bytecode", "--python", python),
            *("-c", constraints, *requirements),
        ],
        project,
    )
    return python


def installed_versions(python: Path) -> dict[str, str]:
    listed = run(["uv", "pip", "list", "--python", python, "--format", "json"], python.parent)
    return {item["name"]: item["version"] for item in json.loads(listed)}
