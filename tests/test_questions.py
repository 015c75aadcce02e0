"""Every question refuses a bad answer with a message that says what is allowed, and then
Copier writes nothing."""

from __future__ import annotations

import subprocess

import pytest

from support import QUESTIONS, ROOT, TOOLS, check_answers, tool_env

BAD_ANSWERS = [
    ("project_name", "", "must start with a letter"),
    ("project_name", "9 lives", "must start with a letter"),
    ("project_name", "a; rm -rf /", "use letters, digits, spaces, -_."),
    ("project_name", "Long" * 17, "must be 1 to 64 characters"),
    ("project_slug", "My Service", "lower case words joined by '-'"),
    ("project_slug", "my--service", "lower case words joined by '-'"),
    ("package_name", "my-service", "must be a lower case identifier"),
    ("package_name", "1service", "must be a lower case identifier"),
    ("package_name", "class", "'class' is a Python keyword"),
    ("package_name", "flask", "'flask' shadows a dependency"),
    ("description", "", "one line, 1 to 200 chars, no \\"),
    ("description", "back\\slash", "one line, 1 to 200 chars, no \\"),
    ("description", "two\nlines", "one line, 1 to 200 chars, no \\"),
    ("author_name", "", 'one line, 1 to 100 chars, no "\\<>'),
    ("author_email", "not-an-address", "must look like name@example.com"),
    ("system_packages", "libpq5, lib pq", "bad name: 'lib pq'"),
    ("system_packages", "libpq5;curl", "bad name: 'libpq5;curl'"),
    ("system_packages", "$HOME", "bad name: '$HOME'"),
    ("system_packages", "LibPQ5", "bad name: 'LibPQ5'"),
    ("build_packages", "gcc, $(id)", "bad name: '$(id)'"),
    ("build_packages", "Build-Essential", "bad name: 'Build-Essential'"),
    ("workers", "0", "'auto' or a whole number 1 to 256"),
    ("workers", "abc", "'auto' or a whole number 1 to 256"),
    ("workers", "257", "'auto' or a whole number 1 to 256"),
    ("workers", "0256", "'auto' or a whole number 1 to 256"),
    ("port", "0", "a whole number from 1 to 65535"),
    ("port", "65536", "a whole number from 1 to 65535"),
    ("port", "http", "a whole number from 1 to 65535"),
    ("python_version", "3.10", "'3.10' is not in ['3.11', '3.12', '3.13', '3.14', '3.15']"),
    ("framework", "django", "'django' is not in ['fastapi', 'flask']"),
    ("database", "mysql", "'mysql' is not in ['sqlite', 'postgresql']"),
    ("license", "GPL", "'GPL' is not in ['MIT', 'Apache-2.0', 'BSD-3-Clause', 'Proprietary']"),
    ("kubernetes", True, "needs database=postgresql"),
    # Copier reads any text as a bool ("maybe" is true): the validators refuse what is not one.
    ("migrations", "maybe", "true or false, not 'maybe'"),
    ("github_actions", "sometimes", "true or false, not 'sometimes'"),
    ("compose", "nope", "true or false, not 'nope'"),
    ("opentelemetry", "perhaps", "true or false, not 'perhaps'"),
    ("example", "sure", "true or false, not 'sure'"),
    ("kubernetes", "maybe", "true or false, not 'maybe'"),
    ("azure", "aws", "'aws' is not in ['none', 'app-service-container', 'app-service-code', 'c"),
    ("azure", "container-apps", "needs database=postgresql"),
]


def ids(case):
    return f"{case[0]}={case[1]!r}"


@pytest.mark.parametrize(("question", "answer", "message"), BAD_ANSWERS, ids=map(ids, BAD_ANSWERS))
def test_bad_answer_is_refused_and_nothing_is_written(copie, question, answer, message):
    check_answers({question: answer})
    result = copie.copy(extra_answers={question: answer})
    assert result.exit_code != 0
    text = str(result.exception)
    assert message in text
    assert f"'{question}'" in text  # the message names the question
    if QUESTIONS[question]["type"] == "str" and "choices" not in QUESTIONS[question]:
        # The prompt shows it on one line, cut at the terminal's width: it must fit 80 columns.
        shown = text[text.index("Validation error") :].splitlines()[0]
        assert len(shown) < 80, f"{len(shown)} columns: {shown}"
    assert not any(copie.test_dir.rglob("*.py")), "files were written despite the bad answer"
    assert not any(copie.test_dir.rglob("Dockerfile"))


def test_every_question_has_help_and_every_free_text_one_a_validator():
    for name, spec in QUESTIONS.items():
        assert spec.get("help"), f"{name} has no help text"
        if spec.get("type") == "str" and "choices" not in spec:
            assert spec.get("validator"), f"{name} has no validator"


def test_every_question_is_covered_by_a_bad_answer():
    covered = {question for question, _, _ in BAD_ANSWERS}
    refusing = set(QUESTIONS)
    assert refusing <= covered, f"no bad-answer test for {sorted(refusing - covered)}"


def test_the_helper_rejects_answers_for_unknown_questions():
    with pytest.raises(ValueError, match="not questions of copier.yml: frameworks"):
        check_answers({"frameworks": "flask"})


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"project_name": "Billing API"}, ("billing-api", "billing_api")),
        ({"project_name": "Shop.Front_2"}, ("shop-front-2", "shop_front_2")),
    ],
)
def test_computed_defaults(copie, answers, expected):
    result = copie.copy(extra_answers=answers)
    assert result.exit_code == 0, result.exception
    assert (result.answers["project_slug"], result.answers["package_name"]) == expected


# The prompt is "🎤 " and the help: at 80 columns, 76 leave room for the emoji and a margin.
HELP_WIDTH = 76


def test_every_help_is_one_line_that_fits_an_80_column_terminal():
    for name, spec in QUESTIONS.items():
        help_text = spec["help"]
        assert "\n" not in help_text.strip(), f"{name}: the help is more than one line"
        assert len(help_text) <= HELP_WIDTH, f"{name}: {len(help_text)} > {HELP_WIDTH} columns"


@pytest.mark.parametrize(
    "answers",
    [
        {"kubernetes": "yes", "database": "postgresql"},
        {"kubernetes": "true", "migrations": "no"},
        {"migrations": "1", "compose": "off", "github_actions": "n"},
    ],
    ids=lambda answers: ",".join(f"{k}={v}" for k, v in answers.items()),
)
def test_yes_and_no_words_are_taken(copie, answers):
    check_answers(answers)
    result = copie.copy(extra_answers=answers)
    assert result.exit_code == 0, result.exception
    for name, given in answers.items():
        if name in ("migrations", "compose", "github_actions", "kubernetes"):
            assert result.answers[name] is (given in ("yes", "true", "1"))


def test_kubernetes_is_not_asked_with_sqlite_and_an_update_keeps_working(copie):
    """With SQLite migrations the question is skipped (its default, false, is used)."""
    result = copie.copy(extra_answers={"database": "sqlite"})
    assert result.exit_code == 0, result.exception
    assert not (result.project_dir / "deploy").exists()
    assert "kubernetes" not in (result.project_dir / ".copier-answers.yml").read_text()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["kubernetes=true", "database=sqlite"], "needs database=postgresql"),
        (["migrations=maybe"], "true or false, not 'maybe'"),
        (["compose=nope"], "true or false, not 'nope'"),
    ],
    ids=lambda value: ",".join(value) if isinstance(value, list) else "",
)
def test_command_line_answers_are_refused(tmp_path, data, message):
    """`copier copy -d ...` as users type it (pytest-copie passes answers another way)."""
    destination = tmp_path / "service"
    args = [arg for answer in data for arg in ("-d", answer)]
    result = subprocess.run(
        [
            str(TOOLS / "copier"),
            "copy",
            "--trust",
            "--defaults",
            *args,
            str(ROOT),
            str(destination),
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not destination.exists() or not any(destination.iterdir())
