"""From the measured runs to the report: medians, the table of ratios, the JSON, the chart."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import matplotlib.ticker
from features import ROWS as FEATURE_ROWS

LABELS = {"fastapi": "FastAPI", "flask": "Flask"}
BASELINES = {"recipe": "recipe", "raw": "raw server"}
CONFIGS = ("recipe", "raw", "generated")
CONFIG_LABELS = {
    "fastapi": {
        "recipe": "recipe: gunicorn + uvicorn.workers.UvicornWorker, access log",
        "raw": "raw: uvicorn[standard], no access log",
        "generated": "generated: entrypoint.sh, access log + request id",
    },
    "flask": {
        "recipe": "recipe: gunicorn sync workers, access log",
        "raw": "raw: gunicorn, no configuration",
        "generated": "generated: entrypoint.sh (gthread), access log + request id",
    },
}
# (framework, metric, workers, route, baseline) -> (comparison, ratio) of generated / baseline
TARGETS = {
    ("fastapi", "requests_per_s", 1, "/health", "recipe"): (">=", 1.6),
    ("fastapi", "requests_per_s", 1, "/health", "raw"): (">=", 0.9),
    ("flask", "requests_per_s", 1, "/io", "recipe"): (">=", 3.0),
    ("flask", "requests_per_s", 1, "/health", "recipe"): (">=", 0.9),
    ("flask", "p99_ms", 1, "/health", "recipe"): ("<=", 1.2),
}
# (framework, memory, workers, baseline) -> (comparison, ratio)
MEMORY_TARGETS = {("fastapi", "pss_bytes", 2, "raw"): ("<=", 1.1)}
MEMORY_NAMES = {"rss_bytes": "RSS", "pss_bytes": "PSS"}
COLD_START_TARGET = ("<=", 1.0)  # without migrations, against the recipe
RESTART_TARGET = ("<=", 1.15)  # migrations on a migrated database, against without
MIGRATIONS_TARGET = ("<=", 1.5)  # migrations on a new SQLite database, against without
REBUILD_TARGET = ("<=", 0.3)  # rebuild after an app change, against an empty-cache build
CHANGED_LAYERS_TARGET = ("<=", 1e6)  # bytes of layers that differ after an app change
CHART = "requests_per_second.png"
# A feature row's measure: its name in the table and its unit.
METRIC_NAMES = {
    "requests_per_s": ("req/s", "req/s"),
    "p99_ms": ("p99", "ms"),
    "cpu_us_per_request": ("server CPU per request", "µs"),
}


@dataclass
class Row:
    measure: str
    generated: float
    baseline_name: str = ""
    baseline: float | None = None
    unit: str = ""
    target: tuple[str, float] | None = None
    # The median of per-round ratios, where the two were measured back to back in each round.
    paired_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        return self.generated / self.baseline if self.baseline else None

    @property
    def result(self) -> str:
        """Met or missed: the ratio against the target, or the value itself without a baseline."""
        compared = self.ratio if self.baseline_name else self.generated
        if self.target is None or compared is None:
            return ""
        comparison, limit = self.target
        met = compared >= limit if comparison == ">=" else compared <= limit
        return "met" if met else "**missed**"

    def cells(self) -> list[str]:
        target = ""
        if self.target:
            comparison, limit = self.target
            # A ratio, or without a baseline the value itself in its unit.
            shown = f"{limit:g}" if self.baseline_name else _number(limit, self.unit)
            target = f"{'≥' if comparison == '>=' else '≤'} {shown}"
        return [
            self.measure,
            _number(self.generated, self.unit),
            f"{self.baseline_name} {_number(self.baseline, self.unit)}" if self.baseline else "",
            f"{self.ratio:.2f}" if self.ratio is not None else "",
            target,
            self.result,
        ]


def _number(value: float, unit: str) -> str:
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "MB":
        return f"{value / 1e6:,.0f} MB" if value >= 10e6 else f"{value / 1e6:,.2f} MB"
    if unit == "ms":
        return f"{value:,.1f} ms"
    return f"{value:,.2f} {unit}".strip()


def _median_run(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def load_rows(framework: str, measured: dict) -> list[Row]:
    label = LABELS[framework]
    rows = []
    for workers_key, load in measured.items():
        workers = int(workers_key)
        plural = "worker" if workers == 1 else "workers"
        metrics = [("requests_per_s", "req/s", "req/s")]
        if workers == 1:
            metrics.append(("p99_ms", "p99", "ms"))
        for route in ("/health", "/io"):
            for key, name, unit in metrics:
                runs = load["runs"]
                generated = _median_run(runs["generated"][route], key)
                for baseline in ("recipe", "raw"):
                    rows.append(
                        Row(
                            f"{label} `{route}` {name}, {workers} {plural}",
                            generated,
                            BASELINES[baseline],
                            _median_run(runs[baseline][route], key),
                            unit,
                            TARGETS.get((framework, key, workers, route, baseline)),
                        )
                    )
        for key, name in MEMORY_NAMES.items():
            for baseline in ("recipe", "raw"):
                rows.append(
                    Row(
                        f"{label} memory ({name}, all processes), {workers} {plural}",
                        _median_run(load["memory"]["generated"], key),
                        BASELINES[baseline],
                        _median_run(load["memory"][baseline], key),
                        "MB",
                        MEMORY_TARGETS.get((framework, key, workers, baseline)),
                    )
                )
    return rows


def feature_rows(framework: str, measured: dict) -> list[Row]:
    """Each feature against the same service without it: /health at one worker."""
    label = LABELS[framework]
    runs = measured["runs"]
    rows = []
    for name, measure, baseline, baseline_label, key, target in FEATURE_ROWS:
        if name in runs and baseline in runs:
            metric, unit = METRIC_NAMES[key]
            if key not in runs[name]["/health"][0]:
                continue  # a run from before the bench measured it
            rows.append(
                Row(
                    f"{label} `/health` {metric}, 1 worker: {measure}",
                    _median_run(runs[name]["/health"], key),
                    baseline_label,
                    _median_run(runs[baseline]["/health"], key),
                    unit,
                    target,
                    paired_ratio=_paired_ratio(
                        runs[name]["/health"], runs[baseline]["/health"], key
                    ),
                )
            )
    return rows


def _paired_ratio(runs: list[dict], baseline_runs: list[dict], key: str) -> float:
    """The median of each round's ratio: a feature costs a few per cent, and the machine's speed
    drifts by more between rounds than between the runs of one round."""
    return statistics.median(
        run[key] / baseline[key] for run, baseline in zip(runs, baseline_runs, strict=True)
    )


def cold_start_rows(framework: str, measured: dict) -> list[Row]:
    label = LABELS[framework]
    seconds = {name: statistics.median(values) for name, values in measured["seconds"].items()}
    workers = measured["workers"]
    measure = f"{label} cold start to first 200, {workers} workers, no migrations"
    rows = [
        Row(measure, seconds["generated"], "recipe", seconds["recipe"], "s", COLD_START_TARGET),
        Row(measure, seconds["generated"], "raw server", seconds["raw"], "s"),
    ]
    if "generated_migrations_restart" in seconds:
        rows.append(
            Row(
                f"{label} restart with SQLite migrations (database migrated already)",
                seconds["generated_migrations_restart"],
                "without",
                seconds["generated"],
                "s",
                RESTART_TARGET,
            )
        )
    rows.append(
        Row(
            f"{label} first start with SQLite migrations (new database)",
            seconds["generated_migrations"],
            "without",
            seconds["generated"],
            "s",
            MIGRATIONS_TARGET,
        )
    )
    return rows


def image_rows(framework: str, measured: dict) -> list[Row]:
    label = LABELS[framework]
    if "skipped" in measured:
        return []
    return [
        Row(
            f"{label} image: size added to `{measured['base']}`", measured["added_bytes"], unit="MB"
        ),
        Row(
            f"{label} image: rebuild after a routes.py change",
            statistics.median(measured["rebuilds_after_app_change_s"]),
            "`--no-cache` build",
            measured["empty_cache_build_s"],
            "s",
            REBUILD_TARGET,
        ),
        *(
            [
                Row(
                    f"{label} image: layers that differ after a routes.py change",
                    statistics.median(measured["changed_layer_bytes"]),
                    unit="MB",
                    target=CHANGED_LAYERS_TARGET,
                )
            ]
            if "changed_layer_bytes" in measured
            else []
        ),
    ]


def rows(results: dict) -> list[Row]:
    found = []
    for framework, measured in results["frameworks"].items():
        if "load" in measured:
            found += load_rows(framework, measured["load"])
        if "features" in measured:
            found += feature_rows(framework, measured["features"])
        if "cold_start" in measured:
            found += cold_start_rows(framework, measured["cold_start"])
        if "image" in measured:
            found += image_rows(framework, measured["image"])
    if "copier" in results:
        for name in ("copy", "update"):
            values = results["copier"][f"{name}_s"]
            found.append(
                Row(f"`copier {name}`, default project", statistics.median(values), unit="s")
            )
    return found


def worker_table(results: dict) -> str:
    """FastAPI's two worker classes at the edge (worker_probe.py), one column each."""
    measured = results["frameworks"].get("fastapi", {}).get("workers")
    if not measured:
        return ""
    names = {
        "generated": "uvicorn's worker with the edge",
        "gunicorn-asgi": "gunicorn's ASGI worker",
    }
    lines = [
        "| FastAPI, at the edge | " + " | ".join(names[name] for name in measured) + " |",
        "| --- |" + " --- |" * len(measured),
    ]
    first = next(iter(measured.values()))
    for part, probes in first.items():
        for probe in probes:
            cells = [str(measured[name][part][probe]) for name in measured]
            lines.append(f"| {part.replace('_', ' ')}: {probe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(table: list[Row]) -> str:
    header = [
        "Measure (medians)",
        "Generated",
        "Baseline",
        "Generated / baseline",
        "Target",
        "Result",
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in table]
    return "\n".join(lines)


def load_errors(results: dict) -> list[str]:
    """Runs that saw socket errors or non-2xx answers: their figures need a second look."""
    found = []
    for framework, measured in results["frameworks"].items():
        loads = dict(measured.get("load", {}))
        if "features" in measured:
            loads["1 (features)"] = measured["features"]
        for workers, load in loads.items():
            for config, routes in load["runs"].items():
                for route, runs in routes.items():
                    errors = sum(run["socket_errors"] for run in runs)
                    non_2xx = sum(run["non_2xx"] for run in runs)
                    if errors or non_2xx:
                        found.append(
                            f"{LABELS[framework]} {config} `{route}` {workers} worker(s): "
                            f"{errors} socket errors, {non_2xx} non-2xx answers"
                        )
    return found


def describe(results: dict) -> str:
    machine = results["machine"]
    options = results["options"]
    text = (
        f"Measured {results['date'].replace('T', ' ').rstrip('Z')} UTC on {machine['cpus']} cores "
        f"({machine['cpu_model']}), {machine['kernel']}; load average "
        f"{machine['load_average_before'][0]:g} before, {machine['load_average_after'][0]:g} after. "
        f"Template commit {results['template']['commit'][:12]}. "
        f"{options['rounds']} alternating rounds of {options['duration_s']} s wrk runs per "
        f"configuration: one worker each with {options['connections_one_worker']} connections "
        f"(server and wrk pinned to different cores), two workers each with "
        f"{options['connections_two_workers']} connections (not pinned). The features' rows "
        f"(with the edge, metrics, tracing) take three times the rounds, each round starting "
        f"with the next configuration, and their ratio is the median of each round's ratio."
    )
    return f"{text} {results['note']}".strip()


def chart(results: dict, path: Path) -> None:
    frameworks = [name for name, m in results["frameworks"].items() if "load" in m]
    if not frameworks:
        return
    figure, axes = plt.subplots(1, len(frameworks), figsize=(7 * len(frameworks), 6), squeeze=False)
    width = 0.27
    colors = {"recipe": "#9e9e9e", "raw": "#4c72b0", "generated": "#dd8452"}
    for axis, framework in zip(axes[0], frameworks, strict=True):
        load = results["frameworks"][framework]["load"]
        groups = [(w, route) for w in load for route in ("/health", "/io")]
        for offset, config in enumerate(CONFIGS):
            values = [
                _median_run(load[w]["runs"][config][route], "requests_per_s") for w, route in groups
            ]
            positions = [i + (offset - 1) * width for i in range(len(groups))]
            bars = axis.bar(
                positions,
                values,
                width,
                label=CONFIG_LABELS[framework][config],
                color=colors[config],
            )
            axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=2)
        axis.set_xticks(
            range(len(groups)),
            [f"{route}\n{w} worker{'s' if w != '1' else ''}" for w, route in groups],
        )
        axis.set_title(LABELS[framework])
        axis.set_ylabel("requests per second (median)")
        axis.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        axis.margins(y=0.1)
    machine = results["machine"]
    figure.suptitle(
        f"Requests per second, median of {results['options']['rounds']} runs: "
        f"{results['date'][:10]}, {machine['cpus']} cores, {machine['cpu_model']}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict, folder: Path) -> str:
    """Write latest.json, a dated copy, latest.md and the chart; the markdown for the console."""
    folder.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    results["table"] = [
        {**asdict(row), "ratio": row.ratio, "result": row.result.strip("*")} for row in table
    ]
    text = json.dumps(results, indent=2) + "\n"
    (folder / "latest.json").write_text(text)
    stamp = results["date"].replace(":", "").replace("-", "")
    (folder / f"{stamp}.json").write_text(text)
    chart(results, folder / CHART)
    errors = load_errors(results)
    markdown = "\n\n".join(
        [
            describe(results),
            markdown_table(table),
            *([worker] if (worker := worker_table(results)) else []),
            *(["Runs with errors: " + "; ".join(errors) + "."] if errors else []),
            f"![Requests per second per configuration](results/{CHART})",
        ]
    )
    (folder / "latest.md").write_text(markdown + "\n")
    return markdown
