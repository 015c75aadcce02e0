"""A matrix of renders: each is lint-clean and free of Jinja debris, and the choices in
copier.yml and the values the templates compare against are the same."""

from __future__ import annotations

import ast
import re
import stat
import tomllib
from pathlib import Path

import pytest
import yaml
from test_readme_commands import sh_blocks, skip_reason

from support import QUESTIONS, ROOT, TOOLS, choice_values, render, run
from workflow_support import check_workflows

MATRIX = {
    "fastapi-sqlite-py3.14-defaults": {},
    # The port OpenTelemetry's Prometheus exporter uses, the metrics port's default.
    "flask-sqlite-py3.11-mit-port9464": {
        "framework": "flask",
        "python_version": "3.11",
        "description": 'Keeps "notes"',
        "port": "9464",
    },
    "fastapi-postgresql-py3.13-apache-opentelemetry": {
        "database": "postgresql",
        "python_version": "3.13",
        "license": "Apache-2.0",
        "system_packages": "libpq5",
        "kubernetes": True,
        "azure": "container-apps",
        "description": 'Says "hi" to the team\'s <apps> & """more"""',
        "opentelemetry": True,
    },
    "flask-postgresql-py3.12-bsd-workers4-noexample": {
        "framework": "flask",
        "python_version": "3.12",
        "database": "postgresql",
        "example": False,
        "license": "BSD-3-Clause",
        "workers": "4",
        "compose": False,
        "azure": "app-service-code",
    },
    "fastapi-nomigrations-py3.11-proprietary-port9000": {
        "migrations": False,
        "python_version": "3.11",
        "license": "Proprietary",
        "port": "9000",
        "github_actions": False,
        "kubernetes": True,
        "azure": "app-service-container",
    },
    "flask-nomigrations-py3.15-packages-workers256-opentelemetry": {
        "framework": "flask",
        "migrations": False,
        "python_version": "3.15",
        "system_packages": "libxml2, libxslt1.1",
        "build_packages": "build-essential,libxml2-dev, libxslt1-dev",
        "workers": "256",
        "port": "65535",
        "opentelemetry": True,
    },
}

JINJA_DEBRIS = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")
# GitHub Actions expressions, `${{ ... }}`, are meant to be in the workflows, and so is the
# version pattern of docker/metadata-action.
GITHUB_EXPRESSION = re.compile(r"\$\{\{ [^{}]+ \}\}|pattern=\{\{version\}\}")


@pytest.fixture(params=list(MATRIX), scope="module")
def project(request, copie_session) -> Path:
    return render(copie_session, **MATRIX[request.param])


def test_every_choice_is_rendered_by_the_matrix():
    for question in ("framework", "database", "python_version", "license", "azure"):
        rendered = {case.get(question, QUESTIONS[question]["default"]) for case in MATRIX.values()}
        assert rendered == set(choice_values(question)), question
    for question in (
        "migrations",
        "example",
        "github_actions",
        "compose",
        "kubernetes",
        "opentelemetry",
    ):
        rendered = {case.get(question, QUESTIONS[question]["default"]) for case in MATRIX.values()}
        assert rendered == {True, False}, question


def test_every_value_the_templates_compare_against_exists():
    comparisons = re.compile(r"(\w+) (?:==|!=) '([^']*)'")
    for path in (ROOT / "template").rglob("*"):
        text = path.name + (path.read_text() if path.is_file() else "")
        for question, value in comparisons.findall(text):
            if question in QUESTIONS and QUESTIONS[question].get("choices"):
                assert value in choice_values(question), f"{path}: {question} == {value!r}"


def test_no_jinja_debris(project):
    for path in project.rglob("*"):
        if path.is_file() and ".venv" not in path.parts and path.name != "uv.lock":
            text = path.read_text(errors="replace")
            if path.suffix != ".mako":
                checked = GITHUB_EXPRESSION.sub("", text) if ".github" in path.parts else text
                assert not JINJA_DEBRIS.search(checked), f"{path.name} keeps Jinja"
            assert "\n\n\n\n" not in text, f"{path.name} has a run of blank lines"
            assert not re.search(r"[ \t]+$", text, re.MULTILINE), f"{path.name}: trailing spaces"


def test_ruff_check_and_format(project):
    run([str(TOOLS / "ruff"), "check", "--no-cache", "."], project)
    run([str(TOOLS / "ruff"), "format", "--no-cache", "--check", "."], project)


def test_hadolint(project):
    run([str(TOOLS / "hadolint"), "--failure-threshold", "style", "Dockerfile"], project)


def test_shellcheck_and_executable_entrypoint(project):
    run([str(TOOLS / "shellcheck"), "entrypoint.sh"], project)
    assert (project / "entrypoint.sh").stat().st_mode & stat.S_IXUSR


def test_pyproject_and_lockfile(project):
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert "dev" in pyproject["dependency-groups"]
    assert (project / "uv.lock").is_file()
    answers = (project / ".copier-answers.yml").read_text()
    sqlite = "migrations: true" in answers and "database: sqlite" in answers
    for question in QUESTIONS:
        asked = {
            "database": "migrations: true" in answers,
            "example": "migrations: true" in answers,
            "kubernetes": not sqlite,  # not asked with SQLite migrations
            "azure": not sqlite,
        }.get(question, True)
        assert (f"\n{question}:" in answers) == asked, (
            f"{question} in the answers file: {not asked}"
        )


def test_description_and_python_version_land_as_answered(project):
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == answers["description"]
    package = project / "src" / answers["package_name"]
    assert (
        ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        == answers["description"]
    )
    readme = (project / "README.md").read_text()
    assert f"\n\n{answers['description']}\n\n" in readme
    if answers["framework"] == "fastapi":
        app = ast.parse((package / "core" / "app.py").read_text())
        keywords = {
            keyword.arg: ast.literal_eval(keyword.value)
            for node in ast.walk(app)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "FastAPI"
            for keyword in node.keywords
        }
        assert keywords["description"] == answers["description"]
    # uv takes the version in .python-version, not the newest it finds
    assert (project / ".python-version").read_text() == f"{answers['python_version']}\n"


def test_conditional_files(project):
    answers = (project / ".copier-answers.yml").read_text()
    has_migrations = "migrations: true" in answers
    package = next((project / "src").iterdir())
    assert (package / "core" / "migrate.py").exists() == has_migrations
    assert (package / "core" / "revision.py").exists() == has_migrations
    assert (package / "migrations" / "versions").is_dir() == has_migrations
    assert (project / "alembic.ini").exists() == has_migrations
    for question, path in [
        ("github_actions", ".github/workflows/ci.yml"),
        ("github_actions", ".github/workflows/template-update.yml"),
        ("github_actions", ".github/update_template.py"),
        ("github_actions", ".github/dependabot.yml"),
        ("compose", "compose.yaml"),
        ("kubernetes", "deploy/kubernetes/deployment.yaml"),
    ]:
        assert (project / path).exists() == (f"{question}: true" in answers), path
    azure = re.search(r"^azure: (?!none)", answers, re.MULTILINE) is not None
    for path in ("azure.yaml", "infra/main.bicep"):
        assert (project / path).exists() == azure, path
    migrate_job = project / "deploy/kubernetes/migrate/job.yaml"
    assert migrate_job.exists() == (has_migrations and "kubernetes: true" in answers)


def test_workflows_pass_zizmor_the_schemas_and_actionlint(project, actionlint):
    if "github_actions: true" in (project / ".copier-answers.yml").read_text():
        check_workflows(project, actionlint)
    else:
        assert not (project / ".github").exists()


def test_metrics_port_defaults_apart_from_the_port(project):
    settings = next((project / "src").iterdir()).joinpath("core", "settings.py").read_text()
    port = re.search(r"^DEFAULT_PORT = (\d+)$", settings, re.MULTILINE)[1]
    metrics_port = re.search(r"^DEFAULT_METRICS_PORT = (\d+)$", settings, re.MULTILINE)[1]
    assert port != metrics_port and 1 <= int(metrics_port) <= 65535


def test_no_opentelemetry_sdk_unless_asked(project):
    """Tracing is a question: answered no, nothing of the SDK is asked for or locked."""
    answers = (project / ".copier-answers.yml").read_text()
    tracing = "opentelemetry: true" in answers
    package = next((project / "src").iterdir())
    assert (package / "core" / "tracing.py").exists() == tracing
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    asked = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("opentelemetry")]
    assert bool(asked) == tracing, asked
    assert ('name = "opentelemetry-sdk"' in (project / "uv.lock").read_text()) == tracing
    sources = "".join(path.read_text() for path in package.rglob("*.py"))
    assert ("opentelemetry" in sources) == tracing


def test_readme_and_docs_mark_what_their_commands_need(project):
    """Each command of the README and docs/ that needs GitHub, Docker, a cluster or Azure is
    marked as such: skip_reason fails on one that is not (the README test skips by the marks)."""
    marked = 0
    for guide in [project / "README.md", *(project / "docs").glob("*.md")]:
        for block in sh_blocks(guide.read_text()):
            marked += sum(skip_reason(block, command) is not None for command in block)
    assert marked >= 4, "the Docker, compose and release commands are marked"


def test_without_the_example_nothing_of_it_is_rendered(project):
    """example=false (or no database): no notes table, route, migration, test or text."""
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    example = answers["migrations"] and answers.get("example", True)
    traces = [
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file()
        and ".venv" not in path.parts
        and path.name != "uv.lock"
        and re.search(r"\bnotes?\b|\bNote\b", path.read_text(errors="replace"))
    ]
    if example:
        assert traces, "the example left no trace at all"
    else:
        assert traces == [], traces


def test_the_teams_own_python_files_are_small(project):
    """Routes and tables, the files a team edits, stay short enough to read at once."""
    package = next((project / "src").iterdir())
    lines = sum(
        len((package / name).read_text().splitlines())
        for name in ("routes.py", "models.py")
        if (package / name).exists()
    )
    assert lines < 150, lines
