"""Renders of the template for the hooks: a release, as a project of given answers had it."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent


def render(source: str, answers: dict, vcs_ref: str | None, destination: Path) -> Path:
    """The template at `vcs_ref`, rendered with these answers (no tasks) into `destination`."""
    from copier import run_copy  # the hooks run under Copier's own Python

    data = {key: value for key, value in answers.items() if not key.startswith("_")}
    run_copy(
        source,
        destination,
        data=data,
        vcs_ref=vcs_ref,
        defaults=True,
        unsafe=True,
        skip_tasks=True,
        quiet=True,
    )
    return destination


def team_owned(path: str) -> bool:
    """Whether a project's file is the team's once it exists (copier.yml's _skip_if_exists)."""
    config = yaml.safe_load((TEMPLATE / "copier.yml").read_text())
    return any(fnmatch.fnmatch(path, pattern) for pattern in config["_skip_if_exists"])
