"""`copier update` as users run it: real git, real Copier, template versions made as tags in a
temporary copy of this repository.

Versions: 1.0.0 is the working tree with two lines as an older release had them; 2.0.0 is
the working tree; 2.1.0 adds a question whose default reproduces 2.0.0's output.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import ROOT, TOOLS, run, sync, uv

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "tests@example.com",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.com",
}
RELEASE_SUBJECT = re.compile(r"^Release (\d+(?:\.\d+)*(?:(?:a|b|rc|\.post|\.dev)\d+)?)$")

# What 1.0.0 had where the working tree has something else: (file, line now, line then).
OLDER_LINES = [
    ("template/.gitignore.jinja", "# Tools\n", "# Tool caches\n"),
    ("template/.env.example.jinja", "never enters the image.\n", "stays out of the image.\n"),
]
NEW_QUESTION = """
team_channel:
  type: str
  help: Chat channel of the team that runs the service (empty for none)
  default: ""
  validator: "{% if team_channel and not (team_channel | regex_search('^#[a-z0-9-]+$')) %}team_channel must look like #team-name{% endif %}"
"""
NEW_DOCS_LINE = "{% if team_channel %}\nAsk in {{ team_channel }}.\n\n{% endif %}\n"


def git(*args: str, cwd: Path) -> str:
    return run(["git", *args], cwd, **GIT_IDENTITY).stdout


def copier(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([str(TOOLS / "copier"), *args], cwd, **GIT_IDENTITY)


def copy_working_tree(destination: Path) -> None:
    """This repository's files as they are now: tracked or untracked, and not ignored."""
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, names.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def replace_line(path: Path, now: str, then: str) -> None:
    text = path.read_text()
    assert now in text, f"{path.name} no longer has {now!r}: update OLDER_LINES"
    path.write_text(text.replace(now, then, 1))


def commit_release(repo: Path, version: str) -> None:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "--allow-empty", "-m", f"Release {version}", cwd=repo)
    git("tag", version, cwd=repo)


# The working tree as the next release: newer than every `version` in copier.yml's
# `_migrations`, so that an update to it runs what an update to the next release will.
NEXT_RELEASE = "999.0.0"


def release_the_working_tree(repo: Path, version: str = NEXT_RELEASE) -> None:
    """Commit the working tree as a release on top of what `repo` has checked out, files that
    it no longer has removed."""
    git("rm", "-q", "-r", "--ignore-unmatch", ".", cwd=repo)
    copy_working_tree(repo)
    commit_release(repo, version)


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("template-versions")
    git("init", "-q", cwd=repo)
    copy_working_tree(repo)
    for name, now, then in OLDER_LINES:
        replace_line(repo / name, now, then)
    commit_release(repo, "1.0.0")
    copy_working_tree(repo)
    commit_release(repo, "2.0.0")
    with (repo / "copier.yml").open("a") as copier_yml:
        copier_yml.write(NEW_QUESTION)
    guide = repo / "template" / "docs" / "configuration.md.jinja"
    title, rest = guide.read_text().split("\n\n", 1)
    guide.write_text(f"{title}\n\n{NEW_DOCS_LINE}{rest}")
    commit_release(repo, "2.1.0")
    return repo


def make_project(repo: Path, version: str, where: Path, *answers: str) -> Path:
    """Copy the template at `version`, then git init and commit, as a user starts."""
    data = [arg for answer in answers for arg in ("-d", answer)]
    copier(
        "copy",
        "--trust",
        "--defaults",
        "--vcs-ref",
        version,
        *data,
        str(repo),
        str(where),
        cwd=where.parent,
    )
    git("init", "-q", cwd=where)
    git("add", "-A", cwd=where)
    git("commit", "-q", "-m", "Start from the template", cwd=where)
    return where


def update(project: Path, version: str, *answers: str) -> subprocess.CompletedProcess:
    data = [arg for answer in answers for arg in ("-d", answer)]
    return copier("update", "--trust", "--defaults", "--vcs-ref", version, *data, cwd=project)


def project_tree(project: Path) -> dict[str, Path]:
    skipped = {".git", ".venv", ".pytest_cache", ".ruff_cache", "__pycache__", "data"}
    return {
        str(path.relative_to(project)): path
        for path in project.rglob("*")
        if path.is_file()
        and not skipped & set(path.relative_to(project).parts)
        and path.name != "uv.lock"
    }


def assert_same_as_fresh_render(project: Path, fresh: Path) -> None:
    """Byte for byte, but for the answers file's _commit (and uv.lock, locked at copy time)."""
    ours, theirs = project_tree(project), project_tree(fresh)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        if name == ".copier-answers.yml":

            def without_commit(path):
                return [
                    line
                    for line in path.read_text().splitlines()
                    if not line.startswith("_commit:")
                ]

            assert without_commit(ours[name]) == without_commit(theirs[name])
        else:
            assert filecmp.cmp(ours[name], theirs[name], shallow=False), f"{name} differs"


def answered(project: Path) -> list[str]:
    """The project's answers, as -d arguments take them."""
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return [f"{key}={value}" for key, value in answers.items() if not key.startswith("_")]


def assert_project_works(project: Path) -> None:
    run([uv(), "lock", "--check"], project)
    sync(project)
    run([uv(), "run", "--locked", "pytest", "-q", "-p", "no:cacheprovider"], project)


def conflict_markers(project: Path) -> list[str]:
    return [
        name
        for name, path in project_tree(project).items()
        if re.search(rb"^(<<<<<<<|>>>>>>>) ", path.read_bytes(), re.MULTILINE)
    ]


@pytest.mark.slow
def test_update_without_user_edits_equals_a_fresh_render(template_repo, tmp_path):
    project = make_project(template_repo, "1.0.0", tmp_path / "service")
    result = update(project, "2.0.0")
    assert "No conflicts" in result.stdout
    fresh = make_project(template_repo, "2.0.0", tmp_path / "fresh")
    assert_same_as_fresh_render(project, fresh)
    assert "# Tools\n" in (project / ".gitignore").read_text()
    assert_project_works(project)


@pytest.mark.slow
def test_user_edits_in_files_the_template_did_not_change_survive(template_repo, tmp_path):
    project = make_project(template_repo, "1.0.0", tmp_path / "service", "migrations=false")
    app = project / "src" / "my_service" / "routes.py"
    route = '\n\n@router.get("/hello")\nasync def hello() -> dict[str, str]:\n    return {"hello": "world"}\n'
    app.write_text(app.read_text() + route)
    user_test = project / "tests" / "test_hello.py"
    user_test.write_text(
        "from fastapi.testclient import TestClient\n\nfrom my_service.core.app import app\n\n\n"
        "def test_hello():\n"
        '    assert TestClient(app).get("/hello").json() == {"hello": "world"}\n'
    )
    readme = project / "README.md"
    readme.write_text(
        readme.read_text().replace("## Develop\n", "## Develop\n\nAsk the team first.\n")
    )
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "Our route, test and README", cwd=project)

    result = update(project, "2.0.0")

    assert "No conflicts" in result.stdout
    assert conflict_markers(project) == []
    assert not list(project.rglob("*.rej"))
    assert route in app.read_text()
    assert user_test.is_file()
    assert "Ask the team first." in readme.read_text()
    assert "# Tools\n" in (project / ".gitignore").read_text()  # the template's change arrived
    assert_project_works(project)


@pytest.mark.slow
def test_conflicting_edit_is_reported_and_nothing_is_lost(template_repo, tmp_path):
    project = make_project(template_repo, "1.0.0", tmp_path / "service", "migrations=false")
    gitignore = project / ".gitignore"
    gitignore.write_text(
        gitignore.read_text().replace("# Tool caches\n", "# Tool caches of the team\n")
    )
    git("commit", "-q", "-am", "Our wording", cwd=project)

    result = update(project, "2.0.0")

    assert "CONFLICT  .gitignore" in result.stderr
    assert "1 conflicted file" in result.stderr
    assert conflict_markers(project) == [".gitignore"]
    text = gitignore.read_text()
    assert "# Tool caches of the team\n" in text  # the user's side
    assert "# Tools\n" in text  # the template's side
    # the template's other change, in a file the user did not touch, went in cleanly
    assert "never enters the image." in (project / ".env.example").read_text()


@pytest.mark.slow
def test_new_question_keeps_the_output_unless_answered(template_repo, tmp_path):
    project = make_project(template_repo, "2.0.0", tmp_path / "service", "migrations=false")
    update(project, "2.1.0")
    changed = git("status", "--porcelain", cwd=project).split("\n")
    assert [line for line in changed if line] == [" M .copier-answers.yml"]
    assert "team_channel: ''" in (project / ".copier-answers.yml").read_text()
    git("commit", "-q", "-am", "Update to 2.1.0", cwd=project)

    update(project, "2.1.0", "team_channel=#payments")
    assert "Ask in #payments." in (project / "docs" / "configuration.md").read_text()
    assert_project_works(project)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "change", "dependency_before", "dependency_after"),
    [
        ("framework=fastapi", "framework=flask", '"fastapi', '"flask'),
        ("migrations=false", "migrations=true", None, '"alembic'),
    ],
    ids=["fastapi-to-flask", "migrations-on"],
)
def test_changing_an_answer_turns_the_project_into_the_other_variant(
    template_repo, tmp_path, first, change, dependency_before, dependency_after
):
    project = make_project(template_repo, "1.0.0", tmp_path / "service", first)
    pyproject = project / "pyproject.toml"
    if dependency_before:
        assert dependency_before in pyproject.read_text()
    assert dependency_after not in pyproject.read_text()

    update(project, "2.0.0", change)

    assert dependency_after in pyproject.read_text()
    if dependency_before:
        assert dependency_before not in pyproject.read_text()
        assert "fastapi" not in (project / "src" / "my_service" / "core" / "app.py").read_text()
        # The routes, unedited since the copy, follow the framework too.
        assert "Blueprint" in (project / "src" / "my_service" / "routes.py").read_text()
    else:
        assert (project / "src" / "my_service" / "core" / "migrate.py").is_file()
    assert conflict_markers(project) == []
    assert_project_works(project)


def previous_release(repo: Path, before: str | None = None) -> tuple[str, str]:
    """The newest release commit in the history (subject "Release X.Y.Z"), or the newest of a
    version older than `before`: (commit, version).

    Tags may be absent in a fresh clone, so the commit is found by its subject.
    """
    for line in git("log", "--format=%H %s", cwd=repo).splitlines():
        commit, _, subject = line.partition(" ")
        match = RELEASE_SUBJECT.match(subject)
        if match and (before is None or version_key(match.group(1)) < version_key(before)):
            return commit, match.group(1)
    pytest.fail(f"no release commit (subject 'Release X.Y.Z') before {before} in the history")


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


@pytest.mark.slow
def test_update_from_the_previous_release_to_the_working_tree(tmp_path):
    repo = tmp_path / "template"
    run(["git", "clone", "-q", "--no-local", str(ROOT), str(repo)], tmp_path)
    commit, version = previous_release(repo)
    git("checkout", "-q", "-B", "releases", commit, cwd=repo)
    git("tag", "-f", version, cwd=repo)
    release_the_working_tree(repo)

    project = make_project(repo, version, tmp_path / "service")
    result = update(project, NEXT_RELEASE)
    assert "No conflicts" in result.stdout, result.stdout + result.stderr
    # With the project's answers: a default that changed since (python_version) stays answered.
    fresh = make_project(repo, NEXT_RELEASE, tmp_path / "fresh", *answered(project))
    assert_same_as_fresh_render(project, fresh)
    assert_project_works(project)


def test_update_hook_runs_only_after_the_merge():
    """On update Copier also runs tasks in temporary copies; the hook must not be one."""
    copier_yml = (ROOT / "copier.yml").read_text()
    tasks = copier_yml.split("_tasks:", 1)[1].split("\n_", 1)[0]
    assert "after_update.py" not in tasks
    assert "_copier_operation == 'copy'" in tasks
    migrations = copier_yml.split("_migrations:", 1)[1].split("\n_", 1)[0]
    assert "after_update.py" in migrations and "_stage == 'after'" in migrations


@pytest.mark.slow
def test_kubernetes_project_on_postgresql_updates_with_defaults(template_repo, tmp_path):
    """The kubernetes question is asked only where it can run; a project that has it keeps it."""
    project = make_project(
        template_repo, "2.0.0", tmp_path / "service", "database=postgresql", "kubernetes=true"
    )
    result = update(project, "2.1.0")
    assert "No conflicts" in result.stdout
    assert "kubernetes: true" in (project / ".copier-answers.yml").read_text()
    assert (project / "deploy" / "kubernetes" / "migrate" / "job.yaml").is_file()
    changed = git("status", "--porcelain", cwd=project).split("\n")
    assert [line for line in changed if line] == [" M .copier-answers.yml"]
