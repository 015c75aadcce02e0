"""Load from wrk on loopback: one bounded run, its rate and latencies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SUMMARY_SCRIPT = Path(__file__).with_name("wrk_summary.lua")
# Long enough that a queue in front of one sync worker shows as latency, not as errors.
REQUEST_TIMEOUT = "10s"


def ensure_wrk() -> str:
    """The path of wrk; installed from Debian's packages when missing and allowed."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        sys.exit("bench: wrk is not installed; install it (Debian: apt-get install wrk)")
    print("bench: wrk is missing: installing it with apt-get (Debian's wrk package)", flush=True)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    return shutil.which("wrk") or sys.exit("bench: wrk is still missing after apt-get")


def wrk(
    url: str, seconds: int, connections: int, cpu: int | None = None, threads: int = 1
) -> dict[str, float]:
    """One run of `seconds` against `url`; pinned to `cpu` when given.

    Returns requests_per_s, p50_ms, p99_ms, max_ms, requests, socket_errors, non_2xx.
    """
    argv = [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        f"--timeout={REQUEST_TIMEOUT}",
        f"--script={SUMMARY_SCRIPT}",
        url,
    ]
    if cpu is not None:
        argv = ["taskset", "--cpu-list", str(cpu), *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    summary_lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not summary_lines:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    summary = json.loads(summary_lines[-1])
    return {
        "requests_per_s": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "max_ms": summary["max_us"] / 1000,
        "requests": summary["requests"],
        "socket_errors": summary["socket_errors"],
        "non_2xx": summary["non_2xx"],
    }
