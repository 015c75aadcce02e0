"""Copier's questions answered by hand, in an 80-column pseudo-terminal, as a user answers them.

The answers are keystrokes: text is typed over the default, a yes/no question gets `y` or `n`,
a choice is picked with the arrow keys. The test reads which question is asked by its help
line (the help of copier.yml), answers it from ANSWERS, and fails on a question it does not
know. A bad answer must be refused at the prompt with the validator's message, and the same
question asked again.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest
import yaml

from support import QUESTIONS, ROOT, TOOLS, choice_values, tool_env

COLUMNS, LINES = 80, 24
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Copier draws a question as "🎤 <help>", then the answer on the next line.
PROMPT = re.compile(r"🎤(?:\x1b\[[0-9;]*m)* (.+?)\x1b\[0m\r")
DOWN, UP, ERASE_LINE, ENTER = "\x1b[B", "\x1b[A", "\x15", "\r"


@dataclass(frozen=True)
class Refused:
    """An answer the prompt must refuse with this message, before the next one is typed.

    One per question: the message shows while the answer is typed, and a second refusal with
    the same message would leave the screen unchanged.
    """

    answer: str
    message: str


# question -> the answer it gets, after the refused ones (a new question needs one entry).
ANSWERS: dict[str, list] = {
    "project_name": [Refused("9 lives", "must start with a letter"), "Shop Front"],
    "project_slug": ["shop-front"],
    "package_name": [
        Refused("class", "'class' is a Python keyword"),
        "shop_front",
    ],
    "description": [
        Refused("back\\slash", "one line, 1 to 200 chars, no \\"),
        'Sells "things" to people',
    ],
    "author_name": ["Ada Lovelace"],
    "author_email": [
        Refused("ada-at-example", "must look like name@example.com"),
        "ada@example.com",
    ],
    "license": ["Apache-2.0"],
    "python_version": ["3.11"],
    "framework": ["flask"],
    "migrations": [True],
    "database": ["sqlite"],
    "example": [False],
    "system_packages": [
        Refused("libpq5;curl", "bad name: 'libpq5;curl'"),
        "libxml2",
    ],
    "build_packages": [""],
    "workers": [
        Refused("0", "'auto' or a whole number 1 to 256"),
        "4",
    ],
    "port": [Refused("http", "a whole number from 1 to 65535"), "9000"],
    "opentelemetry": [True],
    "github_actions": [False],
    "compose": [True],
    "kubernetes": [True],
    "azure": ["container-apps"],
}
# Asked only without SQLite migrations: several replicas cannot share one SQLite file.
NOT_WITH_SQLITE = ("kubernetes", "azure")
HELP_TO_QUESTION = {spec["help"]: name for name, spec in QUESTIONS.items()}


def keystrokes(question: str, answer) -> str:
    """What a user types to give this answer."""
    spec = QUESTIONS[question]
    if spec.get("type") == "bool":
        return "y" if answer else "n"
    if "choices" in spec:
        values = choice_values(question)
        steps = values.index(str(answer)) - values.index(str(spec["default"]))
        return (DOWN if steps > 0 else UP) * abs(steps) + ENTER
    return ERASE_LINE + answer + ENTER


def settle(child: pexpect.spawn, quiet: float = 0.3) -> None:
    """Wait until the terminal has drawn what was typed (no output for `quiet` seconds)."""
    with contextlib.suppress(pexpect.TIMEOUT):
        while True:
            child.read_nonblocking(65536, timeout=quiet)


def answer_prompts(destination: Path, answers: dict[str, list]) -> tuple[list[str], str]:
    """Run `copier copy` in a pseudo-terminal and answer every question; the questions asked
    in order, and the whole output."""
    env = tool_env(TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1")
    env.update(COLUMNS=str(COLUMNS), LINES=str(LINES))
    child = pexpect.spawn(
        str(TOOLS / "copier"),
        ["copy", "--trust", str(ROOT), str(destination)],
        cwd=destination.parent,
        env=env,
        dimensions=(LINES, COLUMNS),
        encoding="utf-8",
        timeout=60,
    )
    child.logfile_read = transcript = io.StringIO()
    asked: list[str] = []
    try:
        while child.expect([PROMPT, pexpect.EOF]) == 0:
            help_line = ANSI.sub("", child.match.group(1)).strip()
            question = HELP_TO_QUESTION.get(help_line)
            if asked and question == asked[-1]:
                continue  # the answered question, drawn once more with its answer
            assert question is not None, f"a prompt this test does not know: {help_line!r}"
            assert question in answers, f"{question!r} was asked; this run has no answer for it"
            asked.append(question)
            for step in answers[question]:
                if isinstance(step, Refused):
                    # The message shows below the answer as it is typed; Enter keeps the
                    # prompt open (the next answer typed there is the one recorded).
                    child.send(keystrokes(question, step.answer).removesuffix(ENTER))
                    child.expect(re.escape(step.message))
                    child.send(ENTER)
                    settle(child)
                else:
                    child.send(keystrokes(question, step))
    finally:
        child.close(force=True)
        output = ANSI.sub("", transcript.getvalue())
    assert child.exitstatus == 0, f"copier exited {child.exitstatus}:\n{output}"
    return asked, output


def expected_answers(answers: dict[str, list]) -> dict:
    return {name: steps[-1] for name, steps in answers.items()}


@pytest.mark.slow
def test_every_question_answered_by_hand_with_sqlite(tmp_path):
    """Every refusal shows at the prompt; with SQLite migrations Kubernetes and Azure are not
    asked."""
    answers = {name: steps for name, steps in ANSWERS.items() if name not in NOT_WITH_SQLITE}
    project = tmp_path / "shop-front"
    asked, _ = answer_prompts(project, answers)

    assert asked == list(answers)
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    for name, value in expected_answers(answers).items():
        assert recorded[name] == value, name
    assert not set(NOT_WITH_SQLITE) & set(recorded)
    assert not (project / "deploy").exists() and not (project / "infra").exists()
    assert (project / ".python-version").read_text() == "3.11\n"


@pytest.mark.slow
def test_kubernetes_and_azure_are_asked_with_postgresql(tmp_path):
    answers = {**ANSWERS, "database": ["postgresql"], "framework": ["fastapi"]}
    project = tmp_path / "shop-front"
    asked, _ = answer_prompts(project, answers)

    assert asked == list(QUESTIONS)
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert recorded["kubernetes"] is True and recorded["database"] == "postgresql"
    assert recorded["azure"] == "container-apps"
    assert (project / "deploy" / "kubernetes" / "migrate" / "job.yaml").is_file()
    assert (project / "infra" / "main.bicep").is_file()


def test_every_question_has_an_answer_here():
    """A question added to copier.yml needs its entry in ANSWERS (the runs fail without it)."""
    assert set(ANSWERS) == set(QUESTIONS)
