"""The deployment files of renders are valid, and agree with the image they deploy.

- GitHub workflows and dependabot.yml: zizmor, the JSON schemas and actionlint
  (workflow_support.py; test_render.py runs them over its matrix).
- compose.yaml: the Compose specification (offline, check-jsonschema), for each answer that
  changes it: no database, SQLite, PostgreSQL.
- deploy/kubernetes/: the Kubernetes schemas (offline, kubernetes-validate, strict).
- One test reads the Dockerfile and entrypoint.sh and compares them with compose.yaml and the
  manifests: probes, ports, user, stop timeout, migration switch and command, workers.
- One test builds the image and runs it as the manifests run it (Docker and PostgreSQL): the
  Job's command migrates, then the Deployment's container, with its user, capabilities, CPU
  and memory limits and environment, serves both probes with the workers it was sized for.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import postgres_support
import pytest
import yaml

from docker_support import PREFIX, build, container, docker, need_docker, remove_images
from support import ROOT, TOOLS, dockerfile_healthcheck, free_port, http_get, need, render, run
from workflow_support import (
    assert_releases_read_no_cache,
    check_workflows,
    lint_workflow,
    validate_dependabot,
    validate_workflows,
    zizmor,
)

RENDERS = {
    "flask-postgresql-kubernetes-py3.13": {
        "framework": "flask",
        "database": "postgresql",
        "kubernetes": True,
        "python_version": "3.13",
    },
    "fastapi-nomigrations-kubernetes-workers256-port9000": {
        "migrations": False,
        "kubernetes": True,
        "workers": "256",
        "port": "9000",
    },
    "fastapi-sqlite-defaults": {},
}

# The oldest Kubernetes the manifests claim (autoscaling/v2, policy/v1 and Job TTLs are GA
# from 1.23), and the newest that kubernetes-validate carries (its default).
KUBERNETES_VERSIONS = ("1.29.0", None)


@pytest.fixture(params=list(RENDERS), scope="module")
def project(request, copie_session) -> Path:
    return render(copie_session, **RENDERS[request.param])


def answers_of(project: Path) -> dict:
    """The recorded answers; a question not asked (kubernetes and azure with SQLite) as no."""
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return {"kubernetes": False, "azure": "none", **recorded}


def manifests(project: Path) -> list[Path]:
    return sorted((project / "deploy" / "kubernetes").rglob("*.yaml"))


def validate_compose(file: Path) -> None:
    schema = ["--builtin-schema", "vendor.compose-spec"]
    run([str(TOOLS / "check-jsonschema"), *schema, str(file)], file.parent)


def validate_manifests(files: list[Path], cwd: Path) -> None:
    for version in KUBERNETES_VERSIONS:
        pinned = ["--kubernetes-version", version] if version else []
        run([str(TOOLS / "kubernetes-validate"), "--strict", *pinned, *map(str, files)], cwd)


# ---------------------------------------------------------------- validity


def test_workflows_pass_zizmor_the_schemas_and_actionlint(project, actionlint):
    check_workflows(project, actionlint)


def test_compose_validates_against_the_compose_specification(project):
    validate_compose(project / "compose.yaml")


def test_compose_depends_on_no_answer_but_the_database():
    # Why the renders above cover every compose.yaml: the framework does not appear in it.
    template = next(ROOT.glob("template/*compose.yaml*")).read_text()
    used = set(re.findall(r"\b(framework|python_version|workers|license)\b", template))
    assert not used, f"compose.yaml depends on {used}: render those answers too"


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(project):
    files = manifests(project)
    if not answers_of(project)["kubernetes"]:
        assert files == [], "kubernetes=false, yet manifests were rendered"
        return
    kinds = {yaml.safe_load(file.read_text())["kind"] for file in files}
    expected = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    if answers_of(project)["migrations"]:
        expected.add("Job")
    assert kinds == expected
    validate_manifests(files, project)


def test_the_validators_reject_broken_files(copie_session, actionlint, tmp_path):
    """Each check above can fail: a small mistake in each kind of file is caught."""
    project = render(copie_session, database="postgresql", kubernetes=True)
    broken = tmp_path / "broken"
    broken.mkdir()

    workflow = (project / ".github/workflows/ci.yml").read_text()
    bad_need = broken / "needs.yml"
    bad_need.write_text(workflow.replace("needs: [lint, test, audit, image]", "needs: [tests]"))
    with pytest.raises(AssertionError, match='needs job "tests" which does not exist'):
        lint_workflow(actionlint, bad_need)
    bad_key = broken / "key.yml"
    bad_key.write_text(workflow.replace("runs-on:", "run-on:", 1))
    with pytest.raises(AssertionError, match="check-jsonschema"):
        validate_workflows([bad_key], broken)

    # zizmor: an action by tag instead of commit, a checkout that keeps its token, and caches
    # in a workflow that tags start are each reported; so is a short cooldown for Dependabot.
    unpinned = re.sub(r"actions/checkout@\S+ # (v[\d.]+)", r"actions/checkout@\1", workflow, 1)
    kept_token = workflow.replace("        with:\n          persist-credentials: false\n", "", 1)
    on_tags = workflow.replace("on:\n  push:\n", 'on:\n  push:\n    tags: ["v*"]\n', 1)
    assert workflow not in {unpinned, kept_token, on_tags}
    for name, text, audit in [
        ("unpinned.yml", unpinned, "unpinned-uses"),
        ("token.yml", kept_token, "artipacked"),
        ("tags.yml", on_tags, "cache-poisoning"),
    ]:
        (broken / name).write_text(text)
        with pytest.raises(AssertionError, match=rf"\[{audit}\]"):
            zizmor(broken / name)
    # zizmor does not see docker/build-push-action's cache: a hand-written check does.
    cached_release = broken / "cached-release.yml"
    cached_release.write_text(workflow.replace("provenance: mode=max", "cache-from: type=gha"))
    with pytest.raises(AssertionError, match="publish.*reads a cache"):
        assert_releases_read_no_cache(cached_release)
    dependabot = broken / "dependabot.yml"
    text = (project / ".github/dependabot.yml").read_text()
    dependabot.write_text(text.replace("default-days: 7", "default-days: 2", 1))
    with pytest.raises(AssertionError, match=r"\[dependabot-cooldown\]"):
        zizmor(dependabot)
    dependabot.write_text(text.replace("cooldown:", "cool-down:", 1))
    with pytest.raises(AssertionError, match="check-jsonschema"):
        validate_dependabot(dependabot)

    compose = broken / "compose.yaml"
    compose.write_text(
        (project / "compose.yaml").read_text().replace("condition: service_healthy", "when: up")
    )
    with pytest.raises(AssertionError, match="check-jsonschema"):
        validate_compose(compose)

    deployment = broken / "deployment.yaml"
    text = (project / "deploy/kubernetes/deployment.yaml").read_text()
    deployment.write_text(text.replace("readinessProbe:", "readynessProbe:"))
    with pytest.raises(AssertionError, match="readynessProbe"):
        validate_manifests([deployment], broken)


def test_the_deploy_guide_walks_from_compose_to_kubernetes_to_azure(project):
    """docs/deploy.md: one step per chosen file, in the order a service grows."""
    answers = answers_of(project)
    deploy = (project / "docs" / "deploy.md").read_text()
    steps = [
        ("compose", "docker compose up --build"),
        ("github_actions", "git tag v0.1.0 && git push origin v0.1.0"),
        ("kubernetes", f"kubectl rollout status deployment/{answers['project_slug']}"),
    ]
    positions = []
    for question, command in steps:
        assert (command in deploy) == answers[question], command
        if answers[question]:
            positions.append(deploy.index(command))
    positions.append(deploy.index("\n## Azure\n"))
    assert positions == sorted(positions)


# ---------------------------------------------------------------- agreement with the image


@dataclass
class Image:
    """What the Dockerfile, entrypoint.sh and the application say about the container."""

    uid: int
    gid: int
    port: int
    metrics_port: int  # the master's GET /metrics
    healthcheck: list[str]
    liveness_path: str
    routes: set[str]
    graceful_timeout: int
    migration_command: list[str] | None  # what entrypoint.sh runs before gunicorn
    migrates_when: dict[str, bool]  # RUN_MIGRATIONS value -> whether the entrypoint migrates
    workdir: str
    writable_dirs: set[str]


def read_image(project: Path, tmp_path: Path) -> Image:
    dockerfile = (project / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.rindex("\nFROM ") :]
    uid, gid = map(int, re.search(r"^USER (\d+):(\d+)$", runtime, re.MULTILINE).groups())
    (port,) = map(int, re.findall(r"^EXPOSE (\d+)$", runtime, re.MULTILINE))
    assert re.search(rf"\bPORT={port}\b", runtime), "EXPOSE and the default PORT differ"
    package = next((project / "src").iterdir())
    healthcheck = (package / "core" / "healthcheck.py").read_text()
    settings = (package / "core" / "settings.py").read_text()
    app = (package / "core" / "app.py").read_text()
    graceful = re.search(r'"GUNICORN_GRACEFUL_TIMEOUT", (\d+)', settings).group(1)
    # The migration command: what the entrypoint runs with RUN_MIGRATIONS=1 and not with 0.
    calls = {value: entrypoint_calls(project, tmp_path, value) for value in ("0", "1")}
    only_when_1 = [command for command in calls["1"] if command not in calls["0"]]
    assert len(only_when_1) <= 1, calls
    migration = only_when_1[0] if only_when_1 else None
    return Image(
        uid=uid,
        gid=gid,
        port=port,
        metrics_port=int(re.search(r"^DEFAULT_METRICS_PORT = (\d+)$", settings, re.MULTILINE)[1]),
        healthcheck=dockerfile_healthcheck(project),
        liveness_path=re.search(r'url = f"http://127\.0\.0\.1:\{port\}(/\w+)"', healthcheck)[1],
        routes=set(re.findall(r'\.(?:add_api_route|add_url_rule)\("(/\w+)"', app)),
        graceful_timeout=int(graceful),
        migration_command=migration,
        migrates_when={value: migration in commands for value, commands in calls.items()},
        workdir=re.findall(r"^WORKDIR (\S+)$", runtime, re.MULTILINE)[-1],
        writable_dirs=set(re.findall(r"chown app:app (\S+)", runtime)),
    )


def entrypoint_calls(project: Path, tmp_path: Path, value: str) -> list[list[str]]:
    """The commands entrypoint.sh runs before gunicorn with RUN_MIGRATIONS=value, recorded by
    a `python` and a `gunicorn` on PATH that write down their arguments."""
    bin_dir = tmp_path / f"recording-{value}"
    bin_dir.mkdir()
    calls = bin_dir / "calls"
    for name in ("python", "gunicorn"):
        recorder = bin_dir / name
        recorder.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        recorder.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "RUN_MIGRATIONS": value}
    result = subprocess.run(
        ["sh", "entrypoint.sh"],
        check=False,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    *before, last = [line.split() for line in calls.read_text().splitlines()]
    assert last[:2] == ["gunicorn", "--config"], last
    return before


def quantity(text: str) -> float:
    """A Kubernetes CPU (cores) or memory (MiB) quantity as a number."""
    units = {"m": 1e-3, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"([0-9.]+)(m|Mi|Gi)?", str(text))
    return float(match[1]) * units.get(match[2], 1)


def seconds(duration: str) -> int:
    return int(re.fullmatch(r"(\d+)s", duration)[1])


def test_deploy_files_agree_with_the_image(project, tmp_path):
    answers = answers_of(project)
    image = read_image(project, tmp_path)
    assert image.liveness_path == "/health" and {"/health", "/ready"} <= image.routes
    if answers["migrations"]:
        assert image.migrates_when == {"0": False, "1": True}
        assert image.migration_command[:2] == ["python", "-m"]
    else:
        assert image.migration_command is None

    compose = yaml.safe_load((project / "compose.yaml").read_text())
    check_compose(compose, image, answers)
    if answers["kubernetes"]:
        docs = {path.stem: yaml.safe_load(path.read_text()) for path in manifests(project)}
        check_kubernetes(docs, image, answers)
        assert docs["deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == (
            seconds(compose["services"]["app"]["stop_grace_period"])
        )


def check_compose(compose: dict, image: Image, answers: dict) -> None:
    app = compose["services"]["app"]
    env = app["environment"]
    assert app["build"] == "."
    assert app["healthcheck"]["test"] == ["CMD", *image.healthcheck]
    metrics = image.metrics_port
    assert app["ports"] == [
        f"127.0.0.1:{image.port}:{image.port}",
        f"127.0.0.1:{metrics}:{metrics}",
    ]
    assert env["PORT"] == str(image.port) and env["METRICS_PORT"] == str(metrics) != env["PORT"]
    assert seconds(app["stop_grace_period"]) > image.graceful_timeout
    assert app["read_only"] is True and app["tmpfs"] == ["/tmp"]
    assert {"path": ".env", "required": False} in app["env_file"]
    if not answers["migrations"]:
        assert "RUN_MIGRATIONS" not in env and "DATABASE_URL" not in env
        assert set(compose["services"]) == {"app"}
        return
    assert image.migrates_when[env["RUN_MIGRATIONS"]], "one container must migrate at start"
    if answers["database"] == "sqlite":
        # The database file's folder is a volume, and the image lets the user write there.
        folder = Path(image.workdir, env["DATABASE_URL"].removeprefix("sqlite:///")).parent
        assert app["volumes"] == [f"data:{folder}"] and str(folder) in image.writable_dirs
        assert set(compose["services"]) == {"app"}
    else:
        db = compose["services"]["db"]
        assert app["depends_on"] == {"db": {"condition": "service_healthy"}}
        assert "pg_isready" in db["healthcheck"]["test"]
        assert env["DATABASE_URL"].startswith("postgresql://postgres@db:5432/")
        assert [volume.split(":")[0] for volume in db["volumes"]] == list(compose["volumes"])


def check_kubernetes(docs: dict, image: Image, answers: dict) -> None:
    deployment = docs["deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    port, metrics = container["ports"]

    assert port["containerPort"] == image.port and env["PORT"]["value"] == str(image.port)
    # The metrics: a named port that the Service does not route to, and the annotations that
    # a Prometheus scrape config keeps pods by.
    assert metrics == {"name": "metrics", "containerPort": image.metrics_port}
    assert env["METRICS_PORT"]["value"] == str(image.metrics_port)
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(image.metrics_port),
        "prometheus.io/path": "/metrics",
    }
    assert [p["targetPort"] for p in docs["service"]["spec"]["ports"]] == [port["name"]]
    for probe, path in [
        ("startupProbe", image.liveness_path),
        ("livenessProbe", image.liveness_path),
        ("readinessProbe", "/ready"),
    ]:
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
    assert pod["terminationGracePeriodSeconds"] > image.graceful_timeout
    check_security(pod, container, image)
    check_resources(container, env, answers["workers"])

    web_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == web_labels
    assert docs["service"]["spec"]["selector"] == web_labels
    assert docs["service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert docs["pdb"]["spec"]["selector"]["matchLabels"] == web_labels
    assert docs["hpa"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"

    if not answers["migrations"]:
        assert "RUN_MIGRATIONS" not in env and "DATABASE_URL" not in env
        return
    assert image.migrates_when[env["RUN_MIGRATIONS"]["value"]] is False
    job = docs["job"]["spec"]["template"]
    (migrate,) = job["spec"]["containers"]
    assert migrate["command"] == image.migration_command
    assert migrate["image"] == container["image"]
    # The Job's pods must not become the Service's endpoints.
    assert not web_labels.items() <= job["metadata"]["labels"].items()
    check_security(job["spec"], migrate, image)
    for database_url in (
        env["DATABASE_URL"],
        {e["name"]: e for e in migrate["env"]}["DATABASE_URL"],
    ):
        assert "value" not in database_url, "DATABASE_URL is inlined"
        assert database_url["valueFrom"]["secretKeyRef"]["key"] == "url"


def check_security(pod: dict, container: dict, image: Image) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        image.uid,
        image.gid,
    )
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    tmp = {mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"}
    assert next(volume for volume in pod["volumes"] if volume["name"] in tmp)["emptyDir"]


def check_resources(container: dict, env: dict, workers_answer: str) -> None:
    """The worker count gunicorn will start fits the CPU and memory the pod gets."""
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    cpu = quantity(resources["limits"]["cpu"])
    memory = quantity(resources["limits"]["memory"])
    assert env["GUNICORN_WORKERS"]["value"] == workers_answer
    if workers_answer == "auto":
        # gunicorn.conf.py: 2 x usable CPUs + 1, usable CPUs = the CPU quota rounded up.
        workers = 2 * math.ceil(cpu) + 1
    else:
        workers = int(workers_answer)
        assert cpu >= max(0.5, (workers - 1) / 2)
    assert memory >= 128 * (workers + 1), f"{memory} MiB for {workers} workers"


# ---------------------------------------------------------------- the image, run as deployed


def docker_options(pod: dict, container_spec: dict) -> list[str]:
    """`docker run` options for what the pod spec asks of the runtime: user, capabilities,
    privilege escalation, CPU and memory limits (read-only root and /tmp: container())."""
    security = pod["securityContext"]
    limits = container_spec["resources"]["limits"]
    assert container_spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container_spec["securityContext"]["allowPrivilegeEscalation"] is False
    return [
        f"--user={security['runAsUser']}:{security['runAsGroup']}",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--cpus={quantity(limits['cpu']):g}",
        f"--memory={quantity(limits['memory']):g}m",
    ]


def literal_env(container_spec: dict, **secrets: str) -> dict[str, str]:
    """The container's environment: literal values, and the given values for secret refs."""
    env = {}
    for item in container_spec.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else secrets[item["name"]]
    return env


def wait_for(url: str, container_name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if http_get(url, timeout=2)[0] == 200:
                return
        time.sleep(0.5)
    logs = docker("logs", container_name, check=False)
    pytest.fail(f"no 200 from {url} within {timeout} s:\n{logs.stdout}{logs.stderr}")


@pytest.mark.docker
@pytest.mark.postgres
@pytest.mark.slow
def test_the_image_runs_as_the_kubernetes_manifests_run_it(copie_session):
    need_docker()
    unreachable = postgres_support.unreachable_reason()
    need(not unreachable, unreachable)
    project = render(copie_session, database="postgresql", kubernetes=True)
    job = yaml.safe_load((project / "deploy/kubernetes/migrate/job.yaml").read_text())
    deployment = yaml.safe_load((project / "deploy/kubernetes/deployment.yaml").read_text())
    job_pod, pod = job["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"]
    (migrate,), (app,) = job_pod["containers"], pod["containers"]

    tag = f"{PREFIX}-deploy"
    built = build(project, tag)
    assert built.returncode == 0, f"docker build failed:\n{built.stderr[-10000:]}"
    name = f"deploy_{uuid.uuid4().hex[:12]}"
    database = postgres_support.create_database(name)
    try:
        # The Job: its command in place of the entrypoint, once, to completion.
        command = migrate["command"]
        env = [
            f"--env={key}={value}"
            for key, value in literal_env(migrate, DATABASE_URL=database).items()
        ]
        docker(
            "run", "--rm", "--network=host", "--read-only", "--tmpfs=/tmp",
            *docker_options(job_pod, migrate), *env, f"--entrypoint={command[0]}", tag, *command[1:],
            timeout=180,
        )  # fmt: skip
        assert postgres_support.query(database, "SELECT version_num FROM alembic_version")

        # The Deployment's container, on free ports instead of its own (the host's network).
        port, metrics_port = free_port(), free_port()
        env = literal_env(app, DATABASE_URL=database) | {
            "PORT": str(port),
            "METRICS_PORT": str(metrics_port),
        }
        with container(tag, port, *docker_options(pod, app), **env) as running:
            for probe in ("readinessProbe", "livenessProbe"):
                wait_for(f"{running.url}{app[probe]['httpGet']['path']}", running.name)
            # Scraped as the pod's annotations say, the probes' requests are counted.
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            scraped = http_get(
                f"http://127.0.0.1:{metrics_port}{annotations['prometheus.io/path']}"
            )
            assert scraped[0] == 200 and b'http_route="/ready"' in scraped[1], scraped
            logs = running.logs()
            state = running.state()
        assert state["Running"] and not state["OOMKilled"], state
        assert "not migrating" in logs, "RUN_MIGRATIONS=0 must leave the migrations to the Job"
        cpus = math.ceil(quantity(app["resources"]["limits"]["cpu"]))
        assert f"workers: {2 * cpus + 1} (auto from GUNICORN_WORKERS" in logs, logs
    finally:
        postgres_support.drop_database(name)
        remove_images(tag)
