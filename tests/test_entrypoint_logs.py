"""The entrypoint's own lines follow LOG_FORMAT: JSON objects with the fields of the service's
JSON lines (logs.JsonFormatter: time, level, logger, message), or the text they always were."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from support import render

JSON_FIELDS = ["time", "level", "logger", "message"]
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def project(copie_session) -> Path:
    return render(copie_session)


def entrypoint(project: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """entrypoint.sh with a `python` and a `gunicorn` on PATH that do nothing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "gunicorn"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    return subprocess.run(
        ["./entrypoint.sh"],
        cwd=project,
        env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("run_migrations", "status", "level", "message"),
    [
        ("0", 0, "info", "RUN_MIGRATIONS=0: not migrating"),
        (
            'y"e\\s\tno',
            2,
            "error",
            "RUN_MIGRATIONS must be 1 or 0 (or true or false), got 'y\"e\\sno'",
        ),
    ],
    ids=["not-migrating", "bad-value-with-quote-backslash-tab"],
)
def test_json_lines_under_log_format_json(
    project, tmp_path, run_migrations, status, level, message
):
    result = entrypoint(project, tmp_path, LOG_FORMAT=" JSON", RUN_MIGRATIONS=run_migrations)
    assert result.returncode == status, result.stderr
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert list(entry) == JSON_FIELDS
    assert UTC_TIME.fullmatch(entry["time"]), entry["time"]
    assert (entry["level"], entry["logger"], entry["message"]) == (level, "entrypoint", message)


def test_text_lines_otherwise(project, tmp_path):
    result = entrypoint(project, tmp_path, RUN_MIGRATIONS="false")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "entrypoint: RUN_MIGRATIONS=false: not migrating\n"


def test_the_fields_are_those_of_the_json_formatter(project):
    logs = (project / "src" / "my_service" / "core" / "logs.py").read_text()
    formatter = logs.split("class JsonFormatter", 1)[1].split("\n\n\n", 1)[0]
    assert re.findall(r'^\s+"(\w+)": ', formatter, re.MULTILINE) == JSON_FIELDS
