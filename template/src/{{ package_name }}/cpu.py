"""How many CPUs this process may really use.

os.cpu_count() sees every CPU of the host, also inside a container limited to one: the
usable count is the smallest of the CPU affinity mask and the cgroup CPU quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(root: Path = Path("/")) -> tuple[int, str]:
    """The usable CPU count, rounded up, and a short reason for it."""
    count, reason = len(os.sched_getaffinity(0)), "CPU affinity"
    quota = cgroup_cpu_quota(root)
    if quota is not None and math.ceil(quota) < count:
        count, reason = math.ceil(quota), f"cgroup CPU quota {quota:g}"
    return max(count, 1), reason


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when there is none.

    cgroup v2 keeps it in cpu.max ("max 100000" or "150000 100000") of the process's cgroup
    and its parents; cgroup v1 in cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
    """
    quotas = [quota for quota in _v2_quotas(root) if quota is not None]
    v1 = _v1_quota(root)
    if v1 is not None:
        quotas.append(v1)
    return min(quotas, default=None)


def _v2_quotas(root: Path):
    cgroup_fs = root / "sys/fs/cgroup"
    if not (cgroup_fs / "cgroup.controllers").exists():
        return
    directory = cgroup_fs / _own_v2_path(root).lstrip("/")
    while True:
        yield _ratio(_read(directory / "cpu.max"))
        if directory == cgroup_fs or cgroup_fs not in directory.parents:
            return
        directory = directory.parent


def _own_v2_path(root: Path) -> str:
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0":
            return path
    return "/"


def _v1_quota(root: Path) -> float | None:
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        directory = root / "sys/fs/cgroup" / name
        quota = _read(directory / "cpu.cfs_quota_us")
        if quota is not None:
            return _ratio(f"{quota} {_read(directory / 'cpu.cfs_period_us')}")
    return None


def _ratio(text: str | None) -> float | None:
    """CPUs from "QUOTA PERIOD"; None for "max", a negative quota or anything unreadable."""
    try:
        quota, period = (text or "").split()
        cpus = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
