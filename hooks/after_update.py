"""Copier migration task, after every update: keep the migrations, bring the team's files
that nobody edited up to the release, refresh uv.lock (and requirements.txt), report conflicts.

Copier runs it in the project's folder once the update is merged (the `_stage == 'after'`
entry of `_migrations`). The team's files (copier.yml's `_skip_if_exists`: routes, tables,
their tests, the README) are never rewritten by Copier once they exist; those still as the
previous release made them follow the new one, so that the example (or a framework chosen
anew) is not left behind. Copier exits 0 even when it left conflicts, so this hook lists every
file with conflict markers or a .rej file and says what to do. It exits 0 itself: the update
happened, and what is left is the user's to review.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from export import REQUIREMENTS, write_requirements
from renders import TEMPLATE, render, team_owned

MARKERS = (b"<<<<<<< ", b">>>>>>> ")
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache"}


def project_files(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name not in SKIPPED_DIRS]
        for name in files:
            yield Path(folder, name)


def has_markers(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return any(line.startswith(MARKERS) for line in stream)
    except OSError:
        return False


def conflicts(root: Path) -> list[str]:
    """Files with conflict markers, and the .rej files of rejected hunks."""
    found = []
    for path in project_files(root):
        if path.suffix == ".rej" or has_markers(path):
            found.append(str(path.relative_to(root)))
    return sorted(found)


def deploys_code_to_app_service(root: Path) -> bool:
    """Whether the answers ask for App Service's code deployment, which needs requirements.txt."""
    answers = root / ".copier-answers.yml"
    text = answers.read_text() if answers.is_file() else ""
    return re.search(r"^azure: app-service-code$", text, re.MULTILINE) is not None


def refresh_requirements(uv: str | None, root: Path, conflicted: list[str]) -> None:
    """Export requirements.txt again from uv.lock: the same file when the lock did not change."""
    if not deploys_code_to_app_service(root) or uv is None:
        return
    if "uv.lock" in conflicted or "pyproject.toml" in conflicted:
        print(f"{REQUIREMENTS}: not refreshed, resolve the conflicts and run `uv lock` first.")
        return
    env = {"UV_PYTHON_DOWNLOADS": "never", **os.environ}
    before = (root / REQUIREMENTS).read_bytes() if (root / REQUIREMENTS).is_file() else None
    if not write_requirements(uv, env):
        print(f"{REQUIREMENTS}: the export from uv.lock failed (see above).")
    elif (root / REQUIREMENTS).read_bytes() != before:
        print(f"{REQUIREMENTS}: exported again from uv.lock; review and commit it.")


def refresh_lock(uv: str | None, conflicted: list[str]) -> None:
    if "pyproject.toml" in conflicted:
        print(
            "uv.lock: not refreshed, pyproject.toml has conflicts; run `uv lock` after fixing it."
        )
        return
    if uv is None:
        print("uv.lock: uv is not installed; install uv and run `uv lock` if dependencies changed.")
        return
    env = {"UV_PYTHON_DOWNLOADS": "never", **os.environ}
    check = subprocess.run(
        [uv, "lock", "--check", "--quiet"], env=env, capture_output=True, check=False
    )
    if check.returncode == 0:
        print("uv.lock: up to date with pyproject.toml.")
        return
    result = subprocess.run([uv, "lock", "--quiet"], env=env, check=False)
    if result.returncode == 0:
        print("uv.lock: refreshed, the dependencies changed; review and commit it.")
    else:
        print("uv.lock: `uv lock` failed (see above); fix pyproject.toml and run it again.")


def restore_migrations() -> None:
    """Put back every migration the update removed (a release, or an answer such as
    example=false, that no longer renders it): a database may have applied it, and later
    migrations revise it."""
    git = shutil.which("git")
    if git is None:
        return
    listed = subprocess.run(
        [git, "ls-files", "--deleted", "--", "src/*/migrations/versions/*.py"],
        capture_output=True,
        text=True,
        check=False,
    )
    deleted = listed.stdout.split()
    if listed.returncode == 0 and deleted:
        subprocess.run([git, "checkout", "--", *deleted], check=False)
        print(f"Kept the migrations the update would have removed: {', '.join(deleted)}.")


def follow_the_template(root: Path) -> None:
    """The team's files as the previous release made them, unedited: as the new one makes them.
    Migrations excepted: a database may have applied them."""
    before = subprocess.run(
        ["git", "show", "HEAD:.copier-answers.yml"], capture_output=True, text=True, check=False
    )
    if before.returncode != 0:
        return
    old_answers = yaml.safe_load(before.stdout)
    answers = yaml.safe_load((root / ".copier-answers.yml").read_text())
    if old_answers == answers:
        return  # the same release and answers: nothing can differ
    followed = []
    with tempfile.TemporaryDirectory() as work:
        try:
            old = render(
                old_answers["_src_path"], old_answers, old_answers.get("_commit"), Path(work, "old")
            )
            new = render(str(TEMPLATE), answers, "HEAD", Path(work, "new"))
        except Exception as error:  # noqa: BLE001
            # Whatever keeps the previous release from being rendered (gone, unreachable), the
            # update itself is done.
            print(
                f"The team's files stay as they are (no render of the previous release: {error})."
            )
            return
        for path in sorted(new.rglob("*")):
            name = path.relative_to(new).as_posix()
            if not path.is_file() or not team_owned(name) or "/migrations/versions/" in name:
                continue
            made = (old / name).read_bytes() if (old / name).is_file() else None
            committed = subprocess.run(
                ["git", "show", f"HEAD:{name}"], capture_output=True, check=False
            )
            unedited = made is not None and committed.returncode == 0 and committed.stdout == made
            if unedited and (root / name).read_bytes() != path.read_bytes():
                (root / name).write_bytes(path.read_bytes())
                followed.append(name)
    if followed:
        print(
            f"Unedited since the last release, now as the new one makes them: {', '.join(followed)}."
        )


def main() -> int:
    root = Path.cwd()
    restore_migrations()
    follow_the_template(root)
    conflicted = conflicts(root)
    refresh_lock(shutil.which("uv"), conflicted)
    refresh_requirements(shutil.which("uv"), root, conflicted)
    if not conflicted:
        print("No conflicts: review the changes with `git diff`, run the tests, and commit.")
        return 0
    print(
        f"\nThe update left {len(conflicted)} conflicted file(s): your edits and the template's"
        " touch the same lines.",
        file=sys.stderr,
    )
    for name in conflicted:
        print(f"  CONFLICT  {name}", file=sys.stderr)
    print(
        "\nIn each file, keep what you need between the markers (<<<<<<< before updating,"
        " ======= , >>>>>>> after updating) and remove the markers; for a .rej file, apply its"
        " hunks by hand and delete it. Then `uv lock` if pyproject.toml changed, `uv run"
        " pytest`, and commit. To start over: `git reset --hard && git clean -fd`.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
