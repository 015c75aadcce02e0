"""Copier task, after a copy: lock the new project's dependencies into uv.lock.

Run by Copier in the new project's folder, with the answer to `azure` as its argument: for
`app-service-code` it also exports requirements.txt from the lock (hooks/export.py). Without uv it says how to lock by hand and
leaves the project as it is (exit 0): the copy itself succeeded.
"""

import os
import shutil
import subprocess
import sys

from export import EXPORT, REQUIREMENTS, write_requirements

MANUAL = "Install uv (https://docs.astral.sh/uv/) and run `uv lock` in the project's folder."


def main(azure: str) -> int:
    uv = shutil.which("uv")
    if uv is None:
        print(f"uv.lock was not made: uv is not installed. {MANUAL}", file=sys.stderr)
        return 0
    # Resolving needs no interpreter of the project's Python version: never download one for it.
    env = {"UV_PYTHON_DOWNLOADS": "never", **os.environ}
    result = subprocess.run([uv, "lock", "--quiet"], env=env, check=False)
    if result.returncode != 0:
        print(f"uv.lock was not made: `uv lock` failed (see above). {MANUAL}", file=sys.stderr)
        return result.returncode
    print("Locked the dependencies in uv.lock.")
    if azure != "app-service-code":
        return 0
    if not write_requirements(uv, env):
        manual = f"uv {' '.join(EXPORT)} --output-file {REQUIREMENTS}"
        print(f"{REQUIREMENTS} was not made: run `{manual}`.", file=sys.stderr)
        return 1
    print(f"Exported the locked dependencies to {REQUIREMENTS} for App Service.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "none"))
