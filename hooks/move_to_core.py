"""Copier migration, before an update from a release older than 0.3.0: the project's own code
moves out of the files the template keeps.

Up to 0.2, the routes were written inside app.py's create_app() and the tables in db.py, beside
the template's machinery; from 0.3.0 the machinery is in src/<package>/core/ and the team's
code in routes.py and models.py, which updates never touch. Copier removes the files a new
release no longer has, app.py and db.py among them, edits and all: so before it merges, this
script carries what the team added to them, comparing each with a fresh render of the release
the project was made from:

- each route and module-level definition added to app.py goes to routes.py (on its router or
  blueprint), with the imports it needs;
- each table and definition added to db.py goes to models.py;
- in the team's own files (tests, other modules), imports of the moved modules point at their
  new places: `my_service.db` at `my_service.core.db` or `my_service.models`,
  `my_service.settings` at `my_service.core.settings`, and so on;
- README.md and tests/test_notes.py, when unedited, make way for the new release's;
- a project that removed the notes example answers `example: false`.

An edit inside the template's own code is not carried: it is listed, with where that code lives
now. The changes are staged, as Copier reads the project from git's index.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import yaml
from renders import TEMPLATE, render

ANSWERS = Path(".copier-answers.yml")
# The modules that moved into core/ (db.py's tables went to models.py).
CORE_MODULES = {
    "app", "cpu", "db", "dbfaults", "edge", "healthcheck", "logs", "metrics", "metrics_server",
    "migrate", "pgwatchdog", "problems", "revision", "settings", "tracing", "worker",
}  # fmt: skip
# Names of 0.2's db.py and app.py that now live elsewhere, and where.
MOVED_NAMES = {
    "Note": "models",
    "NOTE_MAX_LENGTH": "models",
    "PAGE_SIZE": "routes",
    "PAGE_SIZE_MAX": "routes",
    "ClientError": "core.errors",
    "problem_response": "core.errors",
    "json_object": "core.inputs",
    "whole_number_argument": "core.inputs",
}
ROUTE = re.compile(
    r"^@app\.(get|post|put|patch|delete|head|options|route|api_route)\(", re.MULTILINE
)


def segment(source: str, node: ast.stmt) -> str:
    """The source of a statement, with its decorators, dedented."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return textwrap.dedent("\n".join(source.splitlines()[first - 1 : node.end_lineno]))


def top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    """The module's functions, classes and assigned names, by name."""
    found: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found.update((t.id, node) for t in targets if isinstance(t, ast.Name))
    return found


def import_lines(source: str) -> list[str]:
    tree = ast.parse(source)
    return [segment(source, n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]


class Carried:
    """What the team added to app.py and db.py, and what could not be carried."""

    def __init__(self) -> None:
        self.routes: list[str] = []
        self.route_imports: list[str] = []
        self.models: list[str] = []
        self.model_imports: list[str] = []
        self.model_names: set[str] = set()
        self.left: list[str] = []

    def added(self, ours: Path, pristine: Path, inner: str | None = None) -> list[str]:
        """The definitions of `ours` (or of its function `inner`) that `pristine` lacks; an
        edit of one that it has is listed as left."""
        source, before = ours.read_text(), pristine.read_text()

        def defs(text: str) -> tuple[dict[str, ast.stmt], dict[str, ast.stmt]]:
            found = top_level(ast.parse(text))
            function = found.get(inner or "")
            body = function.body if isinstance(function, ast.FunctionDef) else []
            nested = {
                n.name: n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            return found, nested

        (ours_top, ours_in), (old_top, old_in) = defs(source), defs(before)
        mine, theirs = (ours_in, old_in) if inner else (ours_top, old_top)
        added = []
        for name, node in mine.items():
            if inner is None and name == "app":  # app = create_app()
                continue
            if name not in theirs:
                added.append(segment(source, node))
            elif segment(source, node) != segment(before, theirs[name]) and name not in (
                "create_app", "Note", "list_notes", "add_note",
            ):  # fmt: skip
                self.left.append(f"{ours.name}: your edit of {name} (the template's own)")
        return added


def rehome(text: str, package: str, moved_names: dict[str, str], inside: bool) -> str:
    """`text` with its imports and uses of the moved modules and names pointing at their new
    places; `inside` for a module of the package itself (relative imports)."""
    own = "." if inside else f"{package}."

    def from_db(match: re.Match[str]) -> str:
        names = [n.strip() for n in match["names"].strip("()").split(",") if n.strip()]
        homes: dict[str, list[str]] = {}
        for name in names:
            homes.setdefault(moved_names.get(name.split(" as ")[0], "core.db"), []).append(name)
        return "\n".join(
            f"{match['indent']}from {own}{home} import {', '.join(found)}"
            for home, found in homes.items()
        )

    text = re.sub(
        rf"^(?P<indent>[ \t]*)from {re.escape(own)}db import (?P<names>\([^)]*\)|[^\n]+)$",
        from_db,
        text,
        flags=re.MULTILINE,
    )
    modules = "|".join(sorted(CORE_MODULES - {"db"}))
    text = re.sub(
        rf"^([ \t]*)from {re.escape(own)}({modules})\b",
        rf"\1from {own}core.\2",
        text,
        flags=re.MULTILINE,
    )
    text = re.sub(
        rf"^([ \t]*)import {re.escape(package)}\.({modules}|db)\b",
        rf"\1import {package}.core.\2",
        text,
        flags=re.MULTILINE,
    )
    parent = "." if inside else package

    def from_package(match: re.Match[str]) -> str:
        names = [n.strip() for n in match["names"].split(",")]
        core = [n for n in names if n.split(" as ")[0] in CORE_MODULES]
        rest = [n for n in names if n not in core]
        lines = [f"{match['indent']}from {own}core import {', '.join(core)}"] if core else []
        lines += [f"{match['indent']}from {parent} import {', '.join(rest)}"] if rest else []
        return "\n".join(lines)

    text = re.sub(
        rf"^(?P<indent>[ \t]*)from {re.escape(parent)} import (?P<names>[^\n(]+)$",
        from_package,
        text,
        flags=re.MULTILINE,
    )
    # db.Note, db.PAGE_SIZE, db.Todo: names that left core/db.py, used through the module.
    used = {name for name in moved_names if re.search(rf"\bdb\.{name}\b", text)}
    for name in used:
        text = re.sub(rf"\bdb\.{name}\b", name, text)
    # json_object(), ClientError: names of 0.2's app.py, used by routes carried from it.
    tree = ast.parse(text)
    known = set(top_level(tree)) | {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    bare = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= (bare & set(moved_names)) - known
    return with_imports(text, {name: moved_names[name] for name in sorted(used)}, own)


def with_imports(text: str, names: dict[str, str], own: str) -> str:
    """`text` importing each of `names` from its home."""
    return after_imports(
        text, "".join(f"from {own}{home} import {name}\n" for name, home in names.items())
    )


def after_imports(text: str, lines: str) -> str:
    """`text` with `lines` after its last top-level import."""
    if not lines:
        return text
    tree = ast.parse(text)
    last = max(
        (n.end_lineno or 0 for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)),
        default=0,
    )
    source = text.splitlines(keepends=True)
    return "".join([*source[:last], lines, *source[last:]])


def module(base: str, imports: list[str], definitions: list[str]) -> str:
    """A module of a fresh render, plus imports and definitions carried over (imports only
    with definitions: ruff then drops those that nothing uses)."""
    if not definitions:
        return base
    imports = [line for line in imports if not line.startswith("from __future__")]
    text = after_imports(base, "".join(f"{line}\n" for line in imports))
    for definition in definitions:
        text = f"{text.rstrip()}\n\n\n{definition}\n"
    return text


def lint(root: Path, files: list[Path]) -> None:
    """Sort and prune the imports, then format, with the project's own ruff."""
    ruff = root / ".venv" / "bin" / "ruff"
    if not ruff.exists():
        print("  ruff is not in .venv: after the update, `uv run ruff check --fix .`")
        return
    names = [str(path) for path in files]
    subprocess.run(
        [ruff, "check", "--quiet", "--fix", "--select", "I,F401,F811", *names], check=False
    )
    subprocess.run([ruff, "format", "--quiet", *names], check=False)


def main() -> int:
    root = Path.cwd()
    answers = yaml.safe_load(ANSWERS.read_text())
    package = answers["package_name"]
    source = root / "src" / package
    if (source / "core").is_dir() or not (source / "app.py").is_file():
        return 0  # the layout of 0.3.0 already
    framework = answers.get("framework", "fastapi")
    carried = Carried()
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as work:
        old = render(answers["_src_path"], answers, answers.get("_commit"), Path(work, "old"))
        old_source = old / "src" / package
        # Module-level definitions first: the routes may name them in their signatures.
        carried.routes = carried.added(source / "app.py", old_source / "app.py")
        carried.routes += carried.added(source / "app.py", old_source / "app.py", "create_app")
        carried.route_imports = import_lines((source / "app.py").read_text())
        has_db = (source / "db.py").is_file() and (old_source / "db.py").is_file()
        if has_db:
            carried.models = carried.added(source / "db.py", old_source / "db.py")
            carried.model_imports = import_lines((source / "db.py").read_text())
            carried.model_names = {
                name for name in top_level(ast.parse("\n\n".join(carried.models)))
            }
            example = "class Note(" in (source / "db.py").read_text()
            if not example:
                ANSWERS.write_text(f"{ANSWERS.read_text().rstrip()}\nexample: false\n")
                answers["example"] = False
        moved_names = MOVED_NAMES | {name: "models" for name in carried.model_names}
        new = render(str(TEMPLATE), answers, "HEAD", Path(work, "new"))

        router = "router" if framework == "fastapi" else "blueprint"
        routes = [ROUTE.sub(rf"@{router}.\1(", route) for route in carried.routes]
        text = module(
            (new / "src" / package / "routes.py").read_text(), carried.route_imports, routes
        )
        (source / "routes.py").write_text(rehome(text, package, moved_names, inside=True))
        written.append(source / "routes.py")
        if has_db:
            text = module(
                (new / "src" / package / "models.py").read_text(),
                carried.model_imports,
                carried.models,
            )
            (source / "models.py").write_text(rehome(text, package, moved_names, inside=True))
            written.append(source / "models.py")

        tracked = subprocess.run(
            ["git", "ls-files", "*.py"], capture_output=True, text=True, check=True
        ).stdout.split()
        for name in tracked:  # the team's own files: no render made them
            path = root / name
            if (old / name).exists() or path in written:
                continue
            text = path.read_text()
            changed = rehome(text, package, moved_names, inside=source in path.parents)
            if changed != text:
                path.write_text(changed)
                written.append(path)

        # Files that change hands: unedited, they make way for the new release's.
        for name in ("README.md", "tests/test_notes.py"):
            ours, pristine = root / name, old / name
            if not (ours.is_file() and pristine.is_file()):
                continue
            if ours.read_bytes() == pristine.read_bytes():
                subprocess.run(["git", "rm", "--quiet", "--", name], check=True)
            else:
                carried.left.append(f"{name}: kept as you edited it (the new release has its own)")
        for pristine in sorted((old / "tests").glob("test_*.py")):
            ours = root / "tests" / pristine.name
            edited = ours.is_file() and ours.read_bytes() != pristine.read_bytes()
            if pristine.name != "test_notes.py" and edited:
                carried.left.append(f"tests/{pristine.name}: your edit (now in tests/core/)")

    lint(root, written)
    subprocess.run(["git", "add", "--", *map(str, written), str(ANSWERS)], check=True)
    where = f"src/{package}/routes.py" + (f" and src/{package}/models.py" if has_db else "")
    print(f"0.3.0: the template's code moved to src/{package}/core/; yours is in {where}.")
    for line in carried.left:
        print(f"  not carried: {line}; `git diff HEAD` after the update shows it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
