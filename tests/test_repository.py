"""The template repository itself: CI runs the README's test command, its code is clean, and
its own workflow passes zizmor and actionlint."""

from __future__ import annotations

import re

from support import ROOT, TOOLS, run
from workflow_support import check_workflows


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    first_screen = readme.split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", first_screen, re.DOTALL)
    test_command = next(command for command in commands if "pytest" in command)
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == test_command


def test_own_code_is_lint_clean():
    run([str(TOOLS / "ruff"), "check", "--no-cache", "."], ROOT)
    run([str(TOOLS / "ruff"), "format", "--no-cache", "--check", "."], ROOT)
    run([str(TOOLS / "shellcheck"), ".ci/run"], ROOT)


def test_own_workflow_and_dependabot_pass_zizmor_the_schemas_and_actionlint(actionlint):
    check_workflows(ROOT, actionlint)
