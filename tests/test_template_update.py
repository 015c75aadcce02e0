"""The template-update workflow's script (.github/update_template.py of a generated project),
run for real: `copier update` through uvx as on a runner, on projects made from an earlier
template release, up to the commit and the pull request's body. Only the workflow's last
step, which pushes and calls GitHub's API, is not run here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from test_update import (
    GIT_IDENTITY,
    NEXT_RELEASE,
    OLDER_LINES,
    commit_release,
    copy_working_tree,
    git,
    make_project,
    previous_release,
    release_the_working_tree,
    replace_line,
)

from support import ROOT, run

SCRIPT = next(ROOT.glob("template/*.github*/update_template.py"))
WORKFLOW = next(ROOT.glob("template/*.github*/workflows/template-update.yml"))


def run_script(project: Path, body: Path) -> dict[str, str]:
    """Run the script as the workflow does; the `key=value` lines it prints for GITHUB_OUTPUT."""
    script = shutil.copy(SCRIPT, body.parent / "update_template.py")
    result = run(["python3", str(script), "--body", str(body)], project, **GIT_IDENTITY)
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def head(project: Path) -> tuple[str, str]:
    """The current branch and the subject of its last commit."""
    branch = git("branch", "--show-current", cwd=project).strip()
    return branch, git("log", "-1", "--format=%s", cwd=project).strip()


def test_the_workflow_runs_the_script_and_uses_what_it_prints():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    steps = {step.get("id"): step for step in job["steps"]}
    assert '.github/update_template.py --body "$RUNNER_TEMP/body.md"' in steps["update"]["run"]
    publish = job["steps"][-1]
    assert publish["if"] == "steps.update.outputs.changed == 'true'"
    assert '--body-file "$RUNNER_TEMP/body.md"' in publish["run"]
    assert set(re.findall(r"steps\.update\.outputs\.(\w+)", WORKFLOW.read_text())) == {
        "changed",
        "title",
        "branch",
    }
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}


@pytest.mark.slow
def test_update_from_the_previous_release_then_nothing_when_current(tmp_path):
    repo = tmp_path / "template"
    run(["git", "clone", "-q", "--no-local", str(ROOT), str(repo)], tmp_path)
    commit, version = previous_release(repo)
    git("checkout", "-q", "-B", "releases", commit, cwd=repo)
    git("tag", "-f", version, cwd=repo)
    newest = NEXT_RELEASE
    release_the_working_tree(repo)
    project = make_project(repo, version, tmp_path / "service")
    body = tmp_path / "body.md"

    outputs = run_script(project, body)

    title = f"Update to template {newest}"
    assert outputs == {"changed": "true", "branch": "template-update", "title": title}
    assert head(project) == ("template-update", title)
    assert git("status", "--porcelain", cwd=project) == ""
    assert f"_commit: {newest}" in (project / ".copier-answers.yml").read_text()
    assert (project / ".github" / "update_template.py").read_bytes() == SCRIPT.read_bytes()
    text = body.read_text()
    assert text.startswith(f"`copier update` from template version {version} to {newest}.\n")
    assert "No conflicts" in text and "- [ ]" not in text
    assert "close and reopen it" in text

    # A week later, nothing new: no commit, no body, nothing for the workflow to push.
    body.unlink()
    assert run_script(project, body) == {"changed": "false"}
    assert head(project) == ("template-update", title)
    assert not body.exists()


@pytest.mark.slow
def test_conflicts_are_committed_and_listed_in_the_body(tmp_path):
    repo = tmp_path / "template"
    run(["git", "init", "-q", str(repo)], tmp_path)
    copy_working_tree(repo)
    for name, now, then in OLDER_LINES:
        replace_line(repo / name, now, then)
    commit_release(repo, "1.0.0")
    copy_working_tree(repo)
    commit_release(repo, "2.0.0")
    project = make_project(repo, "1.0.0", tmp_path / "service", "migrations=false")
    gitignore = project / ".gitignore"
    gitignore.write_text(
        gitignore.read_text().replace("# Tool caches\n", "# Tool caches of the team\n")
    )
    git("commit", "-q", "-am", "Our wording", cwd=project)
    body = tmp_path / "body.md"

    outputs = run_script(project, body)

    assert outputs["changed"] == "true"
    assert head(project) == ("template-update", "Update to template 2.0.0")
    assert git("status", "--porcelain", cwd=project) == ""
    assert "<<<<<<< " in gitignore.read_text()  # committed as is, for the review
    text = body.read_text()
    assert re.findall(r"^- \[ \] `(.+)`$", text, re.MULTILINE) == [".gitignore"]
    assert "No conflicts" not in text
