"""Update the project to the newest release of its Copier template, on a branch of its own.

The template-update workflow runs it: `copier update` (whose update hook refreshes uv.lock and
lists the files left with conflicts), then, if anything changed, one commit on the branch
template-update and the pull request's body in the file given by --body. It prints
`changed=...` (and `branch=...`, `title=...`) for $GITHUB_OUTPUT; the workflow pushes the
branch and opens or refreshes the pull request.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

BRANCH = "template-update"
COPIER = ["uvx", "--with", "jinja2-time", "copier", "update", "--trust", "--defaults"]
# The update hook's list of conflicts: one "  CONFLICT  <path>" line per file.
CONFLICT = re.compile(r"^\s*CONFLICT\s+(.+?)\s*$", re.MULTILINE)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def template_version() -> str:
    answers = Path(".copier-answers.yml").read_text()
    match = re.search(r"^_commit: ['\"]?([^'\"\s]+)", answers, re.MULTILINE)
    return match.group(1) if match else "unknown"


def pull_request_body(before: str, after: str, conflicts: list[str]) -> str:
    lines = [f"`copier update` from template version {before} to {after}.", ""]
    if conflicts:
        lines += [
            "Files with conflicts, your edits and the template's on the same lines: in each,"
            " keep what you need between the markers (`<<<<<<<`, `=======`, `>>>>>>>`) and"
            " remove them; apply a `.rej` file's hunks by hand and delete it. Commit on this"
            " branch, with `uv lock` if pyproject.toml changed.",
            "",
            *(f"- [ ] `{name}`" for name in conflicts),
        ]
    else:
        lines.append("No conflicts: review the changes and the tests, then merge.")
    lines += [
        "",
        "A pull request opened with the workflow's GITHUB_TOKEN starts no workflow: close and"
        " reopen it, or push to its branch, to run CI.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", type=Path, required=True, help="file for the pull request body")
    args = parser.parse_args()

    before = template_version()
    update = subprocess.run(COPIER, capture_output=True, text=True, check=False)
    sys.stderr.write(update.stdout + update.stderr)
    if update.returncode != 0:
        return update.returncode
    if not git("status", "--porcelain"):
        print("changed=false")
        return 0

    after = template_version()
    title = f"Update to template {after}"
    git("switch", "--quiet", "-C", BRANCH)
    git("add", "--all")
    git("commit", "--quiet", "-m", title)
    args.body.write_text(pull_request_body(before, after, CONFLICT.findall(update.stderr)))
    print(f"changed=true\nbranch={BRANCH}\ntitle={title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
