"""The generated service measured against the guide's recipe and the raw server, in one run.

    uv run --group bench python bench/run.py                          # full run (11-13 min)
    uv run --group bench python bench/run.py --rounds 2 --duration 2  # a quick check

For each framework it renders the default project from this checkout, installs it, and builds
the two baselines in their own virtual environments (same Python, same locked versions where
they overlap). All three serve the same app: the render's, plus a 20 ms I/O route
(bench/apps/). It prints a table of ratios and writes bench/results/: latest.json (with every
run's numbers), a dated copy, latest.md (the README's section) and requests_per_second.png.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import features
import load
import projects
import report
import worker_probe
from images import docker_env, measure_image
from servers import Server, ServerSpec, free_port, time_to_first_200

FRAMEWORKS = ("fastapi", "flask")
SECTIONS = ("copier", "load", "features", "workers", "cold-start", "images")
ROUTES = ("/health", "/io")
APPS = Path(__file__).resolve().with_name("apps")
RESULTS = Path(__file__).resolve().with_name("results")
# Cold starts use the recipe's own worker count, for every configuration.
COLD_START_WORKERS = 2
# Each copier round takes seconds, not milliseconds: three are enough for a median.
COPIER_ROUNDS = 3
# One-worker runs: the server on one core, wrk on the other, so they do not take turns.
LOAD_CPU, SERVER_CPU = 1, 0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

started_at = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - started_at:5.0f} s] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run (default 3)")
    parser.add_argument(
        "--connections", type=int, default=50, help="wrk connections, one worker (default 50)"
    )
    parser.add_argument(
        "--many-connections",
        type=int,
        default=256,
        help="wrk connections, two workers (default 256)",
    )
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="default: all")
    parser.add_argument("--skip", default="", help=f"sections to leave out: {', '.join(SECTIONS)}")
    parser.add_argument(
        "--vcs-ref",
        help="template version to render (default: the commit at HEAD, without uncommitted "
        "changes; 'HEAD' includes them, as copier does)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the renders and logs here")
    parser.add_argument("--note", default="", help="a sentence for the report (e.g. the load)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="default: bench/results")
    args = parser.parse_args()
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir}: give a new or empty folder")
    args.frameworks = [name for name in args.frameworks.split(",") if name]
    args.skip = {name for name in args.skip.split(",") if name}
    unknown = (set(args.frameworks) - set(FRAMEWORKS)) | (args.skip - set(SECTIONS))
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    return args


def minimal_env(home: Path, **extra: str) -> dict[str, str]:
    """What a server gets from the bench: nothing that could change its configuration.

    HOME is the server's own folder: gunicorn puts its control socket there, and two servers
    running side by side must not share one.
    """
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def generated_spec(
    framework: str,
    render: Path,
    data: Path,
    migrate: bool,
    database: Path | None = None,
    name: str = "generated",
    **settings: str,
) -> ServerSpec:
    """The render through its entrypoint.sh, default settings but the worker count and port.

    The database is a new SQLite file for each start, or `database` for all of them; `settings`
    are further environment variables.
    """

    own_metrics_port = features.knows(render, "METRICS_PORT") and "METRICS_PORT" not in settings

    def argv(workers: int, port: int) -> list[str]:
        # Its own metrics port for each server, on when the render has metrics: several servers
        # run side by side.
        metrics = [f"METRICS_PORT={free_port()}"] if own_metrics_port else []
        # `env` and the entrypoint exec: the started pid ends up being gunicorn's master.
        return [
            "env",
            f"PORT={port}",
            f"GUNICORN_WORKERS={workers}",
            f"DATABASE_URL=sqlite:///{database or data / f'{port}.sqlite3'}",
            f"RUN_MIGRATIONS={1 if migrate else 0}",
            *metrics,
            *(f"{key}={value}" for key, value in settings.items()),
            "./entrypoint.sh",
            f"{framework}_with_io:app",
        ]

    venv_bin = render / ".venv" / "bin"
    path = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
    env = minimal_env(render, PATH=path, PYTHONPATH=str(APPS))
    return ServerSpec(name, argv, render, env)


def recipe_spec(framework: str, venv: Path, render: Path) -> ServerSpec:
    """The guide's recipe: gunicorn, access log to stdout; uvicorn's own worker for FastAPI."""
    worker_class = (
        ["--worker-class", "uvicorn.workers.UvicornWorker"] if framework == "fastapi" else []
    )

    def argv(workers: int, port: int) -> list[str]:
        return [
            str(venv / "bin" / "gunicorn"),
            f"{framework}_with_io:app",
            f"--workers={workers}",
            *worker_class,
            f"--bind=127.0.0.1:{port}",
            "--access-logfile=-",
        ]

    # cwd: the venv, where no gunicorn.conf.py is for gunicorn to pick up.
    env = minimal_env(venv, PYTHONPATH=f"{render / 'src'}:{APPS}")
    return ServerSpec("recipe", argv, venv, env)


def raw_spec(framework: str, venv: Path, render: Path) -> ServerSpec:
    """The server alone: uvicorn with uvloop and httptools, or gunicorn with no configuration."""
    env = minimal_env(venv, PYTHONPATH=f"{render / 'src'}:{APPS}")
    if framework == "fastapi":

        def argv(workers: int, port: int) -> list[str]:
            return [
                str(venv / "bin" / "uvicorn"),
                "fastapi_with_io:app",
                f"--workers={workers}",
                "--host=127.0.0.1",
                f"--port={port}",
                "--no-access-log",
                "--loop=uvloop",
                "--http=httptools",
            ]

        return ServerSpec("raw", argv, venv, env, forks_one_worker=False)

    def argv(workers: int, port: int) -> list[str]:
        return [
            str(venv / "bin" / "gunicorn"),
            "flask_with_io:app",
            f"--workers={workers}",
            f"--bind=127.0.0.1:{port}",
        ]

    return ServerSpec("raw", argv, venv, env)


def baseline_requirements(framework: str, config: str, render: Path) -> list[str]:
    """The render's runtime requirements with the server swapped for the baseline's."""
    servers = {"gunicorn", "uvicorn", "uvicorn-worker"}
    app = [r for r in projects.runtime_dependencies(render) if r.split("[")[0] not in servers]
    if framework == "flask":
        return [*app, "gunicorn"]
    # The recipe installs plain uvicorn: no uvloop, no httptools.
    return [*app, "gunicorn", "uvicorn"] if config == "recipe" else [*app, "uvicorn[standard]"]


def prepare(framework: str, workdir: Path, vcs_ref: str) -> dict:
    """Render and install the project, build both baselines; their specs and versions."""
    render = workdir / "generated"
    copy_s = projects.copier_copy(render, vcs_ref, framework=framework)
    python = projects.sync(render)
    versions = {"generated": projects.installed_versions(python)}
    venvs = {}
    for config in ("recipe", "raw"):
        requirements = baseline_requirements(framework, config, render)
        venv = workdir / config
        python = projects.baseline_venv(render, venv, requirements)
        versions[config] = projects.installed_versions(python)
        venvs[config] = venv
    data = workdir / "data"
    data.mkdir()
    say(f"{framework}: rendered in {copy_s:.1f} s, installed, baselines built")
    migrated = data / "migrated.sqlite3"
    return {
        "render": render,
        "versions": versions,
        "load": {
            "recipe": recipe_spec(framework, venvs["recipe"], render),
            "raw": raw_spec(framework, venvs["raw"], render),
            "generated": generated_spec(framework, render, data, migrate=True),
        },
        "cold": {
            "recipe": recipe_spec(framework, venvs["recipe"], render),
            "raw": raw_spec(framework, venvs["raw"], render),
            "generated": generated_spec(framework, render, data, migrate=False),
            # Every start after the first: the database is migrated already.
            "generated_migrations_restart": generated_spec(
                framework, render, data, migrate=True, database=migrated
            ),
            # The first start: a new SQLite file each time.
            "generated_migrations": generated_spec(framework, render, data, migrate=True),
        },
    }


def measure_load(
    specs: dict[str, ServerSpec],
    workers: int,
    args,
    logs: Path,
    routes: tuple[str, ...] = ROUTES,
    rounds: int | None = None,
) -> dict:
    """Alternating wrk runs against every configuration, all started and booted beforehand.

    One worker: server on one core, wrk on the other. Two workers: no pinning, more connections.
    """
    pinned = workers == 1 and (os.cpu_count() or 1) >= 2
    server_cpu, load_cpu = (SERVER_CPU, LOAD_CPU) if pinned else (None, None)
    connections = args.connections if workers == 1 else args.many_connections
    servers = {}
    runs = {name: {route: [] for route in routes} for name in specs}
    memory = {name: [] for name in specs}
    try:
        for name, spec in specs.items():
            servers[name] = Server(spec, workers, logs / f"{name}-{workers}w.log", server_cpu)
        for server in servers.values():
            server.wait_booted()
            for route in routes:  # warm-up, not recorded
                load.wrk(server.url(route), 1, connections, load_cpu)
        for round_number in range(1, (rounds or args.rounds) + 1):
            # Each round starts with the next configuration: none is always run first (or
            # right after the same neighbour), which favoured it by about 1 % here.
            order = list(servers.items())
            shift = (round_number - 1) % len(order)
            for name, server in order[shift:] + order[:shift]:
                server.wait_booted()
                for route in routes:
                    url = server.url(route)
                    ticks = server.cpu_ticks()
                    run = load.wrk(url, args.duration, connections, load_cpu)
                    # The server's own CPU time per request: what the machine's drift, which
                    # moves throughput between rounds, changes little.
                    seconds = (server.cpu_ticks() - ticks) / CLOCK_TICKS
                    run["cpu_us_per_request"] = seconds * 1e6 / max(run["requests"], 1)
                    runs[name][route].append(run)
                memory[name].append(server.memory())
            rates = ", ".join(
                f"{name} {runs[name]['/health'][-1]['requests_per_s']:.0f}" for name in specs
            )
            say(f"  {workers} worker(s), round {round_number}: /health req/s {rates}")
    finally:
        for server in servers.values():
            server.stop()
    return {
        "workers": workers,
        "connections": connections,
        "pinned": pinned,
        "runs": runs,
        "memory": memory,
    }


def measure_cold_starts(specs: dict[str, ServerSpec], rounds: int, logs: Path) -> dict:
    # Not recorded: the first start migrates the database that the restarts find migrated.
    time_to_first_200(specs["generated_migrations_restart"], COLD_START_WORKERS, logs / "warm.log")
    times = {name: [] for name in specs}
    for _ in range(rounds):
        for name, spec in specs.items():
            log = logs / f"cold-{name}.log"
            times[name].append(time_to_first_200(spec, COLD_START_WORKERS, log))
    return {"workers": COLD_START_WORKERS, "seconds": times}


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def run_framework(framework: str, args, workdir: Path, vcs_ref: str) -> dict:
    work = workdir / framework
    logs = work / "logs"
    logs.mkdir(parents=True)
    prepared = prepare(framework, work, vcs_ref)
    result: dict = {"versions": prepared["versions"]}
    if "load" not in args.skip:
        result["load"] = {}
        for workers in (1, 2):
            say(f"{framework}: load, {workers} worker(s) each")
            result["load"][str(workers)] = measure_load(prepared["load"], workers, args, logs)
    if "features" not in args.skip:
        specs = features.specs(framework, prepared["render"], work, vcs_ref, generated_spec)
        say(f"{framework}: features, /health at one worker: {', '.join(specs)}")
        with features.otlp_sink(LOAD_CPU):
            # Three times the rounds: a feature's cost is a few per cent, the machine's noise
            # as much.
            result["features"] = measure_load(
                specs, 1, args, logs, routes=("/health",), rounds=3 * args.rounds
            )
    if framework == "fastapi" and "workers" not in args.skip:
        say(f"{framework}: the worker classes at the edge (limits, slow heads, reload and stop)")
        result["workers"] = probe_workers(prepared["render"], work, logs)
    if "cold-start" not in args.skip:
        say(f"{framework}: cold starts, {COLD_START_WORKERS} workers each")
        result["cold_start"] = measure_cold_starts(prepared["cold"], args.rounds, logs)
        medians = ", ".join(
            f"{name} {statistics.median(times):.2f} s"
            for name, times in result["cold_start"]["seconds"].items()
        )
        say(f"{framework}: cold start medians: {medians}")
    if "images" not in args.skip:
        env, engine = docker_env()
        if env is None:
            say(f"{framework}: images not measured: {engine}")
            result["image"] = {"skipped": engine}
        else:
            say(f"{framework}: image, an empty-cache build and a rebuild ({engine})")
            tag = f"bench-{framework}:{os.getpid()}"
            result["image"] = measure_image(env, prepared["render"], work, tag)
    return result


def probe_workers(render: Path, work: Path, logs: Path) -> dict:
    """worker_probe against uvicorn's worker with the edge and gunicorn's ASGI worker, two
    workers each (a reload replaces them)."""
    data = work / "probe-data"
    data.mkdir()
    specs = {
        "generated": generated_spec("fastapi", render, data, migrate=False),
        "gunicorn-asgi": generated_spec(
            "fastapi",
            render,
            data,
            migrate=False,
            name="gunicorn-asgi",
            GUNICORN_CMD_ARGS="--worker-class asgi",
        ),
    }
    found = {}
    for name, spec in specs.items():
        server = Server(spec, 2, logs / f"probe-{name}.log")
        try:
            server.wait_booted()
            found[name] = worker_probe.probe(server)
        finally:
            server.stop()
        say(f"  {name}: {found[name]}")
    return found


def measure_copier(workdir: Path, vcs_ref: str, rounds: int) -> dict:
    """`copier copy` of the defaults, then `copier update` of it to the same version."""
    times = {"copy_s": [], "update_s": []}
    for number in range(rounds):
        destination = workdir / "copier" / f"project-{number}"
        destination.parent.mkdir(parents=True, exist_ok=True)
        times["copy_s"].append(projects.copier_copy(destination, vcs_ref))
        times["update_s"].append(projects.copier_update_time(destination, vcs_ref))
    return times


def main() -> int:
    args = parse_args()
    load.ensure_wrk()
    commit = projects.template_commit()
    vcs_ref = args.vcs_ref or commit
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "note": args.note,
        "template": {"commit": commit, "vcs_ref": vcs_ref},
        "options": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections_one_worker": args.connections,
            "connections_two_workers": args.many_connections,
        },
        "frameworks": {},
    }
    say(f"work folder: {workdir}; template {vcs_ref}")
    try:
        if "copier" not in args.skip:
            say("copier copy and update")
            results["copier"] = measure_copier(workdir, vcs_ref, min(args.rounds, COPIER_ROUNDS))
        for framework in args.frameworks:
            results["frameworks"][framework] = run_framework(framework, args, workdir, vcs_ref)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - started_at)
    table = report.write(results, args.results)
    print(table)
    say(f"done: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
