"""Every question refuses a bad answer with a message that says what is allowed, and then
Copier writes nothing."""

from __future__ import annotations

import pytest

from support import QUESTIONS, check_answers

BAD_ANSWERS = [
    ("project_name", "", "project_name must start with a letter"),
    ("project_name", "9 lives", "project_name must start with a letter"),
    ("project_name", "a; rm -rf /", "project_name must start with a letter"),
    ("project_slug", "My Service", "project_slug must be lower case letters and digits"),
    ("project_slug", "my--service", "project_slug must be lower case letters and digits"),
    ("package_name", "my-service", "package_name must be a lower case Python identifier"),
    ("package_name", "1service", "package_name must be a lower case Python identifier"),
    ("package_name", "class", "package_name must not be a Python keyword"),
    ("package_name", "flask", "package_name must not shadow a package the service imports"),
    ("description", "", "description must be one line of 1 to 200 characters"),
    ("description", 'say "hi"', "description must be one line of 1 to 200 characters"),
    ("description", "two\nlines", "description must be one line of 1 to 200 characters"),
    ("author_name", "", "author_name must be one line of 1 to 100 characters"),
    ("author_email", "not-an-address", "author_email must be an address like name@example.com"),
    ("system_packages", "libpq5, lib pq", "system_packages: 'lib pq' is not a Debian package name"),
    ("system_packages", "libpq5;curl", "system_packages: 'libpq5;curl' is not a Debian package"),
    ("system_packages", "$HOME", "system_packages: '$HOME' is not a Debian package name"),
    ("system_packages", "LibPQ5", "system_packages: 'LibPQ5' is not a Debian package name"),
    ("build_packages", "gcc, $(id)", "build_packages: '$(id)' is not a Debian package name"),
    ("build_packages", "Build-Essential", "build_packages: 'Build-Essential' is not a Debian"),
    ("workers", "0", "workers must be 'auto' or a whole number from 1 to 64"),
    ("workers", "abc", "workers must be 'auto' or a whole number from 1 to 64"),
    ("workers", "65", "workers must be 'auto' or a whole number from 1 to 64"),
    ("port", "0", "port must be a whole number from 1 to 65535"),
    ("port", "65536", "port must be a whole number from 1 to 65535"),
    ("port", "http", "port must be a whole number from 1 to 65535"),
    ("python_version", "3.10", "'3.10' is not in ['3.11', '3.12', '3.13']"),
    ("framework", "django", "'django' is not in ['fastapi', 'flask']"),
    ("database", "mysql", "'mysql' is not in ['sqlite', 'postgresql']"),
    ("license", "GPL", "'GPL' is not in ['MIT', 'Apache-2.0', 'BSD-3-Clause', 'Proprietary']"),
    ("kubernetes", True, "kubernetes needs database=postgresql"),
    ("azure", "aws", "'aws' is not in ['none', 'app-service-container', 'app-service-code', 'c"),
    ("azure", "container-apps", "azure needs database=postgresql"),
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
    assert not any(copie.test_dir.rglob("*.py")), "files were written despite the bad answer"
    assert not any(copie.test_dir.rglob("Dockerfile"))


def test_every_question_has_help_and_every_free_text_one_a_validator():
    for name, spec in QUESTIONS.items():
        assert spec.get("help"), f"{name} has no help text"
        if spec.get("type") == "str" and "choices" not in spec:
            assert spec.get("validator"), f"{name} has no validator"


def test_every_question_is_covered_by_a_bad_answer():
    covered = {question for question, _, _ in BAD_ANSWERS}
    refusing = {name for name, spec in QUESTIONS.items() if spec.get("type") != "bool"}
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
