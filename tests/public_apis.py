"""Another package's private names in a render's code: run with the render's own Python.

    .venv/bin/python public_apis.py PROJECT

A render may use other packages' public classes, functions and methods only. This finds, in
`src/`, `tests/` and `gunicorn.conf.py`, each:

- import of a private module or name of another package (`from uvicorn._compat import ...`,
  `from gunicorn.workers.gthread import _DEFER`);
- read, call or write of a private attribute that the render does not define itself
  (`child._sum`, `self._install_sigquit_handler()`, `getattr(x, "_name")`);
- method of a subclass that overrides a private method of another package's base class
  (`def _serve(self)` in a subclass of uvicorn-worker's worker): the bases are imported, so
  the check is against the versions the render installed;
- assignment to an attribute of another package's module (`wsgi.Response = ...`,
  `values.ValueClass = ...`): replacing what every importer of that module gets.

Prints one line per finding (path:line: what) and exits 1 when there is any.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

# Documented public names that start with an underscore: os._exit, and namedtuple's methods.
DOCUMENTED = {"_exit", "_replace", "_asdict", "_fields", "_make"}


def is_private(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__")
    return name.startswith("_") and not dunder and name not in DOCUMENTED


class Module:
    """A file of the render: its syntax tree and what its imports bind."""

    def __init__(self, path: Path, package: str) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(), str(path))
        self.package = package
        # name -> dotted path of another package's module or object it was imported as
        self.foreign: dict[str, str] = {}
        for node in ast.walk(self.tree):
            self.foreign.update(self.bound_by(node))

    def bound_by(self, node: ast.AST) -> dict[str, str]:
        """The names an import of another package binds: name -> dotted path."""
        if isinstance(node, ast.Import):
            return {
                alias.asname or alias.name.partition(".")[0]: alias.name
                if alias.asname
                else alias.name.partition(".")[0]
                for alias in node.names
                if not self.own(alias.name)
            }
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if self.own(node.module):
                return {}
            return {
                alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names
            }
        return {}

    def own(self, module: str) -> bool:
        return module == self.package or module.startswith(f"{self.package}.")

    def dotted(self, node: ast.expr) -> str | None:
        """The dotted path of another package's object that an expression names, if any."""
        if isinstance(node, ast.Name):
            return self.foreign.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None


def resolve(dotted: str) -> object | None:
    """The object at a dotted path (module, then attributes), None when it cannot be had."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
            if found is None:
                return None
        return found
    return None


def own_names(modules: list[Module]) -> set[str]:
    """Every name the render defines: functions, classes, attributes and variables it sets."""
    names: set[str] = set()
    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def findings(module: Module, own: set[str]) -> list[str]:
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{module.path}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not module.own(alias.name) and any(map(is_private, alias.name.split("."))):
                    report(node, f"imports the private module {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if module.own(node.module):
                continue
            if any(map(is_private, node.module.split("."))):
                report(node, f"imports from the private module {node.module}")
            for alias in node.names:
                if is_private(alias.name):
                    report(node, f"imports the private name {node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own:
            report(node, f"uses the private attribute {node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            report(node, f"uses the private attribute {node.args[1].value} by name")
        elif isinstance(node, ast.ClassDef):
            bases = [resolve(path) for b in node.bases if (path := module.dotted(b))]
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and is_private(
                    item.name
                ):
                    for base in bases:
                        if base is not None and hasattr(base, item.name):
                            name = getattr(base, "__qualname__", base)
                            report(item, f"overrides the private method {name}.{item.name}")
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for target in targets:
                path = module.dotted(target.value) if isinstance(target, ast.Attribute) else None
                if path and isinstance(resolve(path), type(sys)):
                    report(target, f"replaces {path}.{target.attr}, another package's")
    return found


def scan(project: Path) -> list[str]:
    package = next(path.name for path in (project / "src").iterdir() if path.is_dir())
    paths = [
        *sorted((project / "src").rglob("*.py")),
        *sorted((project / "tests").rglob("*.py")),
        project / "gunicorn.conf.py",
    ]
    modules = [Module(path, package) for path in paths if path.is_file()]
    own = own_names(modules)
    return [line for module in modules for line in findings(module, own)]


if __name__ == "__main__":
    lines = scan(Path(sys.argv[1]))
    for line in lines:
        print(line)
    sys.exit(1 if lines else 0)
