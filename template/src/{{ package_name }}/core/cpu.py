# Kept by the template: `copier update` changes this file. Your code goes outside core/.
"""How many CPUs this process may really use.

os.cpu_count() sees every CPU of the host, also inside a container limited to one: the
usable count is the smallest of the CPU affinity mask and the cgroup CPU quota.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path


def usable_cpus(root: Path = Path("/")) -> tuple[int, str]:
    """The usable CPU count, rounded up, and a short reason for it."""
    if hasattr(os, "sched_getaffinity"):
        count, reason = len(os.sched_getaffinity(0)), "CPU affinity"
    else:  # macOS, where a developer may run the entrypoint
        count, reason = os.cpu_count() or 1, "os.cpu_count()"
    quota = cgroup_cpu_quota(root)
    if quota is not None and math.ceil(quota) < count:
        count, reason = math.ceil(quota), f"cgroup CPU quota {quota:g}"
    return max(count, 1), reason


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when there is none.

    cgroup v2 keeps it in cpu.max ("max 100000" or "150000 100000"), cgroup v1 in
    cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. The smallest quota of the process's
    cgroup and its parents is the one that holds.
    """
    cgroup_fs = root / "sys/fs/cgroup"
    own = _own_cgroups(root)
    if (cgroup_fs / "cgroup.controllers").exists():
        texts = [_read(d / "cpu.max") for d in _up_from(cgroup_fs, own.get("", "/"))]
    else:
        texts = []
        for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            for directory in _up_from(cgroup_fs / name, own.get("cpu", "/")):
                quota = _read(directory / "cpu.cfs_quota_us")
                texts.append(f"{quota} {_read(directory / 'cpu.cfs_period_us')}")
    quotas = [quota for quota in map(_ratio, texts) if quota is not None]
    return min(quotas, default=None)


def _own_cgroups(root: Path) -> dict[str, str]:
    """The process's cgroup path per controller from /proc/self/cgroup ("" for cgroup v2).

    Lines read "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1).
    """
    paths = {}
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            for controller in fields[1].split(",") if fields[1] else [""]:
                paths[controller] = fields[2]
    return paths


def _up_from(mount: Path, path: str) -> Iterator[Path]:
    """The cgroup directory of `path` under `mount` and its parents, up to the mount.

    Inside a container the mount is often the container's own cgroup while /proc/self/cgroup
    names the host's path: the directories that do not exist are read as having no quota.
    """
    # A path outside the cgroup namespace ("/../..") says nothing about the mount: start there.
    directory = mount if ".." in path.split("/") else mount / path.strip("/")
    while directory != mount and mount in directory.parents:
        yield directory
        directory = directory.parent
    yield mount


def _ratio(text: str | None) -> float | None:
    """CPUs from "QUOTA PERIOD"; None for "max", a negative quota or anything unreadable."""
    try:
        quota, period = (int(part) for part in (text or "").split())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
