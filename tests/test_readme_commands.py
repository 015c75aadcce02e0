"""Both READMEs followed word for word on a machine with uv and git and nothing else.

The commands are read from the fenced `sh` blocks of README.md and of the README that the
default project gets, and run in the order a reader meets them: the template's README (make
a project from a local checkout, put it under git, take a new release), then the project's
(develop, migrate, run, update). Each block starts where its README says (the template's in
the folder that holds the checkout, the project's in the project) and runs line by line, each
line exiting 0. A server is started, asked for /health and stopped. What needs more than this
machine gives is skipped by what it names (SKIPPED); the reader's own steps between the
READMEs (a new template release, committing their work before an update) are the test's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_update import GIT_IDENTITY, copy_working_tree

from support import ROOT, TOOLS, free_port, http_get, port_is_open, tool_env

# What a command needs that this test does not have is marked in the README: `# needs ...` on
# its line, or as the first line of its block (then for the whole block). A command that names
# one of these without a mark fails the test: the README must say what a reader needs.
NEEDS_A_MARK = {
    r"\bgh:": "GitHub",
    r"\bgit push\b": "GitHub",
    r"\bdocker\b": "Docker",
    r"\bkubectl\b": "a Kubernetes cluster",
    r"(^|[;&|(]\s*)azd? ": "Azure",
    r"\bbench/run\.py\b": "wrk and Docker",
}
MARK = re.compile(r"#\s*(needs .*)$")
# Sections of the template's README whose commands run in the checkout, not beside it.
FROM_THE_CHECKOUT = ("Benchmarks", "Develop the template")
# Servers: started, asked for /health, stopped.
SERVERS = ("uvicorn ", "flask --app", "./entrypoint.sh")
PYTHONS = sorted(Path.home().glob(".pyenv/versions/3.1[1-5].*/bin/python3.1[1-5]"))
CHECKOUT = "python-service-template"
PROJECT = "my-service"


class Block(list):
    """The commands of a fenced sh block (continuation lines joined, comment lines left out)
    and what the whole block needs, when its first line says so."""

    needs: str | None = None


def sh_blocks(markdown: str) -> list[Block]:
    blocks = []
    for body in re.findall(r"^```sh\n(.*?)^```$", markdown, re.DOTALL | re.MULTILINE):
        block, pending = Block(), ""
        first = body.partition("\n")[0]
        if first.startswith("#") and (mark := MARK.search(first)):
            block.needs = mark.group(1)
        for line in body.splitlines():
            if line.endswith("\\"):
                pending += line[:-1]
                continue
            line, pending = pending + line, ""
            if line.strip() and not line.lstrip().startswith("#"):
                block.append(line)
        blocks.append(block)
    return blocks


def skip_reason(block: Block, command: str) -> str | None:
    """Why `command` of `block` is not run (what its mark says it needs), None to run it."""
    mark = MARK.search(command)
    needs = block.needs or (mark.group(1) if mark else None)
    if needs:
        return f"{needs}: {command}"
    for pattern, need in NEEDS_A_MARK.items():
        assert not re.search(pattern, command), f"needs {need} but is not marked: {command}"
    return None


def only_uv_and_git(tmp_path: Path) -> dict[str, str]:
    """PATH with uv, uvx, git, CPython 3.11 to 3.15 (from pyenv) and the system's base tools."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("uv", "uvx", "git"):
        found = shutil.which(name)
        assert found, f"{name} is not installed"
        (tools / name).symlink_to(found)
    for python in PYTHONS:  # where uv finds them; here it may not download any
        (tools / python.name).symlink_to(python)
    path = os.pathsep.join([str(tools), "/usr/bin", "/bin"])
    for name in ("copier", "pytest", "ruff"):
        assert shutil.which(name, path=path) is None, f"{name} on PATH: not a bare machine"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(GIT_IDENTITY, PATH=path, UV_PYTHON_DOWNLOADS="never")
    return env


class Reader:
    """Runs commands as a reader types them into a shell, one line after the other."""

    def __init__(self, env: dict[str, str], state: Path) -> None:
        self.env = env
        self.state = state
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def run_block(self, block: Block, cwd: Path) -> Path:
        for command in block:
            reason = skip_reason(block, command)
            if reason:
                self.skipped.append(reason)
            elif any(server in command for server in SERVERS):
                self.serve(command, cwd)
            else:
                cwd = self.run(command, cwd)
        return cwd

    def run(self, command: str, cwd: Path) -> Path:
        """One line in bash; the folder it ends in (a line may `cd`)."""
        script = f'{command}\nstatus=$?\npwd > "{self.state}"\nexit $status\n'
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, (
            f"`{command}` in {cwd} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-5000:]}\n--- stderr\n{result.stderr[-5000:]}"
        )
        self.ran.append(command)
        return Path(self.state.read_text().strip())

    def serve(self, command: str, cwd: Path) -> None:
        match = re.search(r"--port (\d+)", command)
        port = int(match.group(1)) if match else answers(cwd)["port"]
        with started(command, cwd, self.env, int(port)) as (url, log):
            status, body = http_get(f"{url}/health")
            assert status == 200, body
            # One access line per request (uvicorn's own access log would add a second).
            path = f"/{uuid.uuid4().hex}"
            assert http_get(f"{url}{path}")[0] == 404
            time.sleep(0.5)
            lines = [line for line in log.read_text().splitlines() if path in line]
            assert len(lines) == 1, f"`{command}` logged {path} {len(lines)} times: {lines}"
        self.ran.append(command)


def answers(project: Path) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


@contextlib.contextmanager
def started(command: str, cwd: Path, env: dict[str, str], port: int) -> Iterator[tuple[str, Path]]:
    """The server of `command` answering /health on `port` (its URL and its log), stopped
    (SIGTERM) afterwards."""
    deadline = time.monotonic() + 120
    while port_is_open(port):  # another test's server on the README's port
        assert time.monotonic() < deadline, f"port {port} stays taken"
        time.sleep(1)
    log = cwd / f".server-{free_port()}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert process.poll() is None, f"`{command}` exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"`{command}`: no /health:\n{log.read_text()}"
            with contextlib.suppress(OSError):
                if http_get(f"{url}/health", timeout=2)[0] == 200:
                    break
            time.sleep(0.3)
        yield url, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.unlink()


def git(*args: str, cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def release_a_change(checkout: Path, env: dict[str, str], line: str) -> None:
    """A new template commit, so that `copier update` has something to bring."""
    gitignore = checkout / "template" / ".gitignore.jinja"
    gitignore.write_text(gitignore.read_text() + line)
    git("commit", "-qam", f"Template: {line.strip()}", cwd=checkout, env=env)


def sections(markdown: str) -> dict[str, str]:
    """The text of each `## ` section (the first screen under "")."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


@pytest.mark.slow
def test_both_readmes_work_as_written(tmp_path):
    env = only_uv_and_git(tmp_path)
    work = tmp_path / "work"
    checkout = work / CHECKOUT
    checkout.mkdir(parents=True)
    git("init", "-q", cwd=checkout, env=env)
    copy_working_tree(checkout)
    git("add", "-A", cwd=checkout, env=env)
    git("commit", "-qm", "The template's working tree", cwd=checkout, env=env)
    reader = Reader(env, tmp_path / "pwd")
    project = work / PROJECT

    ci_test_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    updates = 0
    for title, text in sections((checkout / "README.md").read_text()).items():
        for block in sh_blocks(text):
            if block == [ci_test_command]:
                reader.skipped.append(f"the template's own tests, this one among them: {block}")
                continue
            if "copier update" in " ".join(block):
                updates += 1
                release_a_change(checkout, env, f".editor-{updates}/\n")
            reader.run_block(block, checkout if title in FROM_THE_CHECKOUT else work)
    assert (project / ".copier-answers.yml").is_file(), "no project was made"

    # The project's README, then its reference in docs/ (whose commands need more, or say so).
    guides = [project / "README.md", *sorted((project / "docs").glob("*.md"))]
    for block in (block for guide in guides for block in sh_blocks(guide.read_text())):
        if block and block[0].startswith("git init") and (project / ".git").is_dir():
            reader.skipped.append(f"done already, as the template's README said: {block}")
            continue
        updated = [c for c in block if "copier update" in c and not skip_reason(block, c)]
        if updated:
            git("add", "-A", cwd=project, env=env)  # the reader commits their work, as it asks
            git("commit", "-qm", "Our work", cwd=project, env=env)
            updates += 1
            release_a_change(checkout, env, f".editor-{updates}/\n")
        reader.run_block(block, project)

    # Each update brought its release (a reader's update with nothing new proves little).
    assert updates == 2, f"{updates} update commands in the two READMEs"
    gitignore = (project / ".gitignore").read_text()
    assert ".editor-1/" in gitignore and ".editor-2/" in gitignore, gitignore
    ran = "\n".join(reader.ran)
    for expected in ("copier copy", "copier update", "uv run pytest", "./entrypoint.sh"):
        assert expected in ran, f"no command with {expected!r} ran"
    assert any("uvicorn" in command for command in reader.ran)
    # uv made the environment with the project's Python (.python-version), not the newest
    venv = (project / ".venv" / "pyvenv.cfg").read_text()
    assert re.search(
        rf"^version_info = {re.escape(answers(project)['python_version'])}\.", venv, re.MULTILINE
    )
    print("ran:", *reader.ran, "skipped:", *reader.skipped, sep="\n")


def test_a_command_is_skipped_by_its_mark_and_an_unmarked_need_fails():
    (whole, lines) = sh_blocks(
        "```sh\n# needs Docker\ndocker build .\n```\n"
        "```sh\nuv sync\ngit push origin v1   # needs GitHub\n```\n"
    )
    assert skip_reason(whole, "docker build .") == "needs Docker: docker build ."
    assert skip_reason(lines, "uv sync") is None
    assert skip_reason(lines, lines[1]).startswith("needs GitHub")
    with pytest.raises(AssertionError, match="needs Docker but is not marked"):
        skip_reason(lines, "docker compose up")


def test_the_message_after_copy_says_how_to_reach_postgresql(tmp_path):
    """`uv run ./entrypoint.sh` migrates first: the database must exist, at DATABASE_URL."""
    result = subprocess.run(
        [str(TOOLS / "copier"), "copy", "--trust", "--defaults", "--skip-tasks"]
        + ["-d", "database=postgresql", str(ROOT), str(tmp_path / "service")],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
        check=True,
    )
    message = result.stdout + result.stderr
    assert "The PostgreSQL database must exist first" in message
    assert "postgresql://postgres@127.0.0.1:5432/my_service" in message
    assert "export DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/my_service" in message
