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


def test_generated_workflows_pin_the_same_action_commits_as_ours():
    """Dependabot bumps the pins of tests.yml; the template's pins, which it cannot read, must
    follow: an action is pinned to one commit, with its version in a comment, everywhere."""
    pin = re.compile(r"uses: ([\w.-]+/[\w.-]+)@(\S+)(?: # (v[\d.]+))?")
    files = [ROOT / ".github/workflows/tests.yml", *ROOT.glob("template/*.github*/workflows/*")]
    pins: dict[str, set[tuple[str, str | None]]] = {}
    for file in files:
        for action, ref, version in pin.findall(file.read_text()):
            assert re.fullmatch(r"[0-9a-f]{40}", ref) and version, f"{file.name}: {action}@{ref}"
            pins.setdefault(action, set()).add((ref, version))
    assert {"actions/checkout", "astral-sh/setup-uv"} <= set(pins)
    assert {action: refs for action, refs in pins.items() if len(refs) > 1} == {}
