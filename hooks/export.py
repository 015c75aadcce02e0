"""requirements.txt for App Service's code deployment, exported from uv.lock.

App Service's build (Oryx) installs requirements.txt with pip; it does not read uv.lock. The
export pins what the lock pins and ends with the project itself (`.`, not editable), so
that pip builds and installs the package. Without hashes: pip cannot hash a local folder.
The generated project's test and CI run the same command and fail when the file drifts.
"""

from __future__ import annotations

import subprocess

REQUIREMENTS = "requirements.txt"
EXPORT = ["export", "--locked", "--no-dev", "--no-editable", "--no-hashes"]


def write_requirements(uv: str, env: dict[str, str]) -> bool:
    """Write requirements.txt from uv.lock; whether it worked (uv prints why not)."""
    command = [uv, *EXPORT, "--output-file", REQUIREMENTS, "--quiet"]
    return subprocess.run(command, env=env, check=False).returncode == 0
