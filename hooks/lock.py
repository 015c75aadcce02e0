"""Copier task, after a copy: lock the new project's dependencies into uv.lock.

Run by Copier in the new project's folder. Without uv it says how to lock by hand and
leaves the project as it is (exit 0): the copy itself succeeded.
"""

import os
import shutil
import subprocess
import sys

MANUAL = "Install uv (https://docs.astral.sh/uv/) and run `uv lock` in the project's folder."


def main() -> int:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
