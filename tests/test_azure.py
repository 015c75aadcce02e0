"""Azure (`azure`): the azd project and its Bicep are valid, agree with the image, and the two
App Service contracts hold when reproduced here (Azure itself cannot be reached).

- Every Bicep file parses (pycep-parser) and passes checkov's bicep checks; a skipped check
  carries its reason in the file.
- azure.yaml validates against the Azure Developer CLI's schema (tests/schemas/, offline).
- Ports, paths, variables, commands of the Bicep agree with the Dockerfile and entrypoint
  (read_image() of test_deploy.py), as the Kubernetes manifests are checked there.
- requirements.txt (code deployment) is exported from uv.lock; the project's test and CI
  step catch a drift; the update hook refreshes it.
- The image, started as App Service starts a custom container, is healthy on the health
  check path and migrated; the code, installed as App Service's build installs it (a fresh
  venv, pip install -r requirements.txt) and started by the Bicep's startup command, too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import postgres_support
import pytest
import yaml
from pycep import BicepParser
from test_deploy import read_image, wait_for

from docker_support import PREFIX, build, container, need_docker, remove_images
from support import ROOT, TOOLS, free_port, http_get, need, render, run, tool_env
from workflow_support import lint_workflow

TARGETS = ("app-service-container", "app-service-code", "container-apps")
RENDERS = {
    f"{target}-{database}": {"azure": target, **answers}
    for target in TARGETS
    for database, answers in {
        "postgresql": {"database": "postgresql"},
        "nomigrations": {"migrations": False, "framework": "flask", "port": "9000"},
    }.items()
}
SCHEMA = ROOT / "tests" / "schemas" / "azure.yaml.json"
# The export that makes requirements.txt (hooks/export.py), here to stdout.
EXPORT = ["export", "--locked", "--no-dev", "--no-editable", "--no-hashes", "--quiet"]
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]


@pytest.fixture(params=list(RENDERS), scope="module")
def project(request, copie_session) -> Path:
    return render(copie_session, **RENDERS[request.param])


def answers_of(project: Path) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def bicep(path: Path) -> dict:
    return BicepParser().parse(file_path=path)


def resource(parsed: dict, name: str) -> dict:
    return parsed["resources"][name]["config"]


def app_settings(site: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in site["properties"]["siteConfig"]["appSettings"]}


def checkov(folder: Path) -> dict:
    """checkov's bicep checks of a folder, offline; its JSON report."""
    result = subprocess.run(
        [str(TOOLS / "checkov"), "--framework", "bicep", "--directory", str(folder),
         "--output", "json", "--skip-download", "--compact"],
        cwd=folder, env=tool_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.stdout.strip(), f"checkov printed no report:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def validate_azure_yaml(file: Path) -> None:
    run([str(TOOLS / "check-jsonschema"), "--schemafile", str(SCHEMA), str(file)], file.parent)


# ---------------------------------------------------------------- validity


def test_every_bicep_file_parses(project):
    files = sorted((project / "infra").rglob("*.bicep"))
    names = {path.name for path in files}
    answers = answers_of(project)
    expected = {"main.bicep", "identity.bicep"}
    expected |= (
        {"containerapp.bicep"} if answers["azure"] == "container-apps" else {"appservice.bicep"}
    )
    if answers["azure"] != "app-service-code":
        expected.add("registry.bicep")
    if answers["migrations"]:
        expected |= {"postgresql.bicep", "keyvault.bicep"}
    assert names == expected
    for path in files:
        assert bicep(path)["resources"] or path.name == "main.bicep", path
    # Every module main.bicep uses is there.
    main = (project / "infra" / "main.bicep").read_text()
    used = set(re.findall(r"^module \w+ '(modules/[\w.]+)'", main, re.MULTILINE))
    assert {f"modules/{name}" for name in names - {"main.bicep"}} == used


def test_bicep_passes_checkov_and_every_skip_has_a_reason(project):
    report = checkov(project / "infra")
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 0
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} is skipped without a reason"


def test_checkov_fails_a_weakened_app(tmp_path, copie_session):
    """The check above can fail: HTTP allowed and FTP on are caught."""
    project = render(copie_session, azure="app-service-container", migrations=False)
    infra = tmp_path / "infra"
    shutil.copytree(project / "infra", infra)
    module = infra / "modules" / "appservice.bicep"
    text = module.read_text().replace("httpsOnly: true", "httpsOnly: false")
    module.write_text(text.replace("ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'"))
    failed = {c["check_id"] for c in checkov(infra)["results"]["failed_checks"]}
    assert {"CKV_AZURE_14", "CKV_AZURE_78"} <= failed


def test_azure_yaml_validates_against_the_azd_schema(project, tmp_path):
    file = project / "azure.yaml"
    validate_azure_yaml(file)
    service = yaml.safe_load(file.read_text())["services"]["web"]
    answers = answers_of(project)
    host = "containerapp" if answers["azure"] == "container-apps" else "appservice"
    assert service["host"] == host and service["project"] == "."
    code = answers["azure"] == "app-service-code"
    assert service["language"] == ("python" if code else "docker")
    assert ("docker" in service) == (not code)
    # The validator can fail: a misspelt key is refused.
    broken = tmp_path / "azure.yaml"
    document = yaml.safe_load(file.read_text())
    document["services"]["web"]["docker"] = {"paht": "Dockerfile"}
    broken.write_text(yaml.safe_dump(document))
    with pytest.raises(AssertionError, match="Additional properties are not allowed"):
        validate_azure_yaml(broken)


def test_no_azure_renders_no_azure_files(copie_session):
    project = render(copie_session)
    assert not (project / "azure.yaml").exists() and not (project / "infra").exists()
    assert not (project / "requirements.txt").exists()
    guide = (project / "docs" / "deploy.md").read_text()
    assert "-d azure=" in guide, "the deploy guide points to the azure question"


# ---------------------------------------------------------------- agreement with the image


def test_azure_files_agree_with_the_image(project, tmp_path):
    image = read_image(project, tmp_path)
    answers = answers_of(project)
    modules = project / "infra" / "modules"
    main = bicep(project / "infra" / "main.bicep")
    assert "azd-env-name" in json.dumps(main["variables"]["tags"])
    if answers["azure"] == "container-apps":
        parsed = bicep(modules / "containerapp.bicep")
        check_container_apps(parsed, image, answers)
        check_migration_hook(project, answers)
        containers = [resource(parsed, "app")["properties"]["template"]["containers"][0]]
        if answers["migrations"]:
            containers.append(
                resource(parsed, "migrate")["properties"]["template"]["containers"][0]
            )
        names = {item["name"] for spec in containers for item in spec["env"]}
    else:
        parsed = bicep(modules / "appservice.bicep")
        check_app_service(parsed, image, answers)
        names = set(app_settings(resource(parsed, "app")))
    # Every variable given to the service is one it reads (the platform's own aside).
    platform = {name for name in names if name.startswith(("WEBSITES_", "SCM_"))}
    read = (next((project / "src").iterdir()) / "core" / "settings.py").read_text()
    read += (project / "entrypoint.sh").read_text()
    for name in names - platform:
        assert f'"{name}"' in read or f"${{{name}" in read, f"{name} is read by nothing"
    if answers["migrations"]:
        vault = bicep(modules / "keyvault.bicep")
        secret = resource(vault, "databaseUrl")
        assert secret["name"] == "database-url"
        assert secret["properties"]["value"].startswith("postgresql://")
        assert "sslmode=require" in secret["properties"]["value"]
        database = bicep(modules / "postgresql.bicep")
        assert database["parameters"]["databaseName"]["default"] == answers["package_name"]


def check_app_service(parsed: dict, image, answers: dict) -> None:
    site = resource(parsed, "app")
    config = site["properties"]["siteConfig"]
    settings = app_settings(site)
    assert site["properties"]["httpsOnly"] is True
    assert config["ftpsState"] == "Disabled" and config["minTlsVersion"] == "1.2"
    assert config["alwaysOn"] is True
    assert config["healthCheckPath"] == image.liveness_path and image.liveness_path in image.routes
    assert "azd-service-name" in json.dumps(site["tags"])
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    if answers["azure"] == "app-service-container":
        assert config["linuxFxVersion"] == "DOCKER|${image}"
        # A custom container gets requests on WEBSITES_PORT (80 without it).
        assert settings["WEBSITES_PORT"] == str(image.port)
        assert "appCommandLine" not in config, "the image's entrypoint starts the service"
    else:
        assert config["linuxFxVersion"] == f"PYTHON|{answers['python_version']}"
        # The built-in images get requests on PORT, which gunicorn binds (settings.py).
        assert settings["PORT"] == str(image.port) and "WEBSITES_PORT" not in settings
        assert settings["SCM_DO_BUILD_DURING_DEPLOYMENT"] == "true"
        assert config["appCommandLine"]
    if answers["migrations"]:
        url = settings["DATABASE_URL"]
        assert url == "@Microsoft.KeyVault(SecretUri=${databaseUrlSecretUri})"
        assert "RUN_MIGRATIONS" not in settings, "each instance migrates at start, under a lock"
    else:
        assert "DATABASE_URL" not in settings


def check_container_apps(parsed: dict, image, answers: dict) -> None:
    variables = {name: spec["value"] for name, spec in parsed["variables"].items()}
    assert variables["port"] == image.port
    app = resource(parsed, "app")
    configuration = app["properties"]["configuration"]
    ingress = configuration["ingress"]
    assert ingress["targetPort"]["operator"]["operands"]["true_value"] == "port"
    assert ingress["allowInsecure"] is False
    template = app["properties"]["template"]
    (web,) = template["containers"]
    assert template["terminationGracePeriodSeconds"] > image.graceful_timeout
    probes = {probe["type"]: probe["httpGet"] for probe in variables["probes"]}
    assert probes == {
        "Startup": {"path": image.liveness_path, "port": "port"},
        "Liveness": {"path": image.liveness_path, "port": "port"},
        "Readiness": {"path": "/ready", "port": "port"},
    }
    assert {"/ready", image.liveness_path} <= image.routes
    assert web["probes"]["operator"]["operands"]["true_value"] == "probes"
    env = {item["name"]: item for item in web["env"]}
    assert env["PORT"]["value"]["function"]["parameters"] == {"value_to_convert": "port"}
    assert env["GUNICORN_WORKERS"]["value"] == answers["workers"]
    rules = template["scale"]["rules"]
    assert rules and template["scale"]["maxReplicas"] == "maxReplicas"
    if not answers["migrations"]:
        assert "RUN_MIGRATIONS" not in env and "DATABASE_URL" not in env
        assert "migrate" not in parsed["resources"]
        return
    assert image.migrates_when[env["RUN_MIGRATIONS"]["value"]] is False
    assert env["DATABASE_URL"] == {"name": "DATABASE_URL", "secretRef": "database-url"}
    job = resource(parsed, "migrate")
    (migrate,) = job["properties"]["template"]["containers"]
    assert migrate["command"] == image.migration_command
    assert migrate["image"] == web["image"]
    assert job["properties"]["configuration"]["triggerType"] == "Manual"
    job_env = {item["name"]: item for item in migrate["env"]}
    assert job_env["DATABASE_URL"] == env["DATABASE_URL"]
    assert variables["secrets"][0]["name"] == "database-url"


def check_migration_hook(project: Path, answers: dict) -> None:
    hook = project / "infra" / "hooks" / "migrate.sh"
    service = yaml.safe_load((project / "azure.yaml").read_text())["services"]["web"]
    if not answers["migrations"]:
        assert not hook.exists() and "hooks" not in service
        return
    assert service["hooks"]["predeploy"]["run"] == "infra/hooks/migrate.sh"
    run([str(TOOLS / "shellcheck"), str(hook)], project)
    assert os.access(hook, os.X_OK)
    main = (project / "infra" / "main.bicep").read_text()
    # The variables the hook reads are main.bicep's outputs, or set by azd itself.
    for name in set(re.findall(r"\$\{(\w+):\?", hook.read_text())) - {"SERVICE_WEB_IMAGE_NAME"}:
        assert f"output {name} string" in main, name


# ---------------------------------------------------------------- requirements.txt


def export(project: Path) -> str:
    return run([shutil.which("uv") or "uv", *EXPORT], project).stdout


def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_requirements_txt_is_the_lock_and_drift_fails_the_test_and_ci(
    copie_session,
    actionlint,
):
    project = render(copie_session, azure="app-service-code", database="postgresql")
    requirements = (project / "requirements.txt").read_text()
    assert body(requirements) == body(export(project))
    assert "\n.\n" in requirements, "the project itself is installed (src layout)"
    assert "--hash" not in requirements and "-e " not in requirements
    test = project / "tests" / "core" / "test_requirements.py"
    pytest_args = [str(TOOLS / "python"), "-m", "pytest", "-p", "no:cacheprovider"]
    pytest_args += ["--noconftest", str(test)]  # the test alone: no app to import
    run(pytest_args, project)

    # The CI step, as the workflow runs it, in a git checkout of the project.
    workflow = project / ".github" / "workflows" / "ci.yml"
    lint_workflow(actionlint, workflow)
    steps = yaml.safe_load(workflow.read_text())["jobs"]["lint"]["steps"]
    (step,) = [s for s in steps if "requirements.txt" in s.get("name", "")]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "render"]):
        run([*GIT, *command], project)
    run(["bash", "-e", "-c", step["run"]], project)

    # A drift: a pin that uv.lock does not say. Both fail.
    drifted = requirements.replace("\ngunicorn==", "\ngunicorn>=", 1)
    assert drifted != requirements
    (project / "requirements.txt").write_text(drifted)
    with pytest.raises(AssertionError, match="out of date with uv.lock"):
        run(pytest_args, project)
    run([*GIT, "commit", "-qam", "drift"], project)
    with pytest.raises(AssertionError, match="exited 1"):
        run(["bash", "-e", "-c", step["run"]], project)

    # The update hook writes it again from uv.lock.
    run([str(TOOLS / "python"), str(ROOT / "hooks" / "after_update.py")], project)
    assert (project / "requirements.txt").read_text() == requirements


def test_only_the_code_deployment_has_requirements_txt(project):
    code = answers_of(project)["azure"] == "app-service-code"
    assert (project / "requirements.txt").exists() == code
    assert (project / "tests" / "core" / "test_requirements.py").exists() == code
    assert ".azure/" in (project / ".gitignore").read_text().splitlines()


# ---------------------------------------------------------------- the contracts, reproduced


@pytest.mark.docker
@pytest.mark.postgres
@pytest.mark.slow
def test_the_image_runs_as_app_service_runs_a_custom_container(copie_session):
    need_docker()
    unreachable = postgres_support.unreachable_reason()
    need(not unreachable, unreachable)
    # The port is the project's own (EXPOSE, WEBSITES_PORT): a free one, on the host network.
    port = free_port()
    project = render(copie_session, azure="app-service-container", database="postgresql",
                     port=str(port))  # fmt: skip
    site = resource(bicep(project / "infra" / "modules" / "appservice.bicep"), "app")
    config, settings = site["properties"]["siteConfig"], app_settings(site)
    assert "appCommandLine" not in config
    tag = f"{PREFIX}-appservice"
    built = build(project, tag)
    assert built.returncode == 0, f"docker build failed:\n{built.stderr[-10000:]}"
    name = f"appservice_{uuid.uuid4().hex[:12]}"
    database = postgres_support.create_database(name)
    try:
        # What App Service gives a custom container: its settings (the Key Vault reference
        # resolved), PORT equal to WEBSITES_PORT, WEBSITE_HOSTNAME, and /home mounted.
        env = {key: value for key, value in settings.items() if "${" not in value}
        env |= {"DATABASE_URL": database, "PORT": settings["WEBSITES_PORT"]}
        env["WEBSITE_HOSTNAME"] = "app-test.azurewebsites.net"
        with container(tag, int(settings["WEBSITES_PORT"]), "--tmpfs=/home", **env) as running:
            wait_for(f"{running.url}{config['healthCheckPath']}", running.name)
            status, _ = http_get(f"{running.url}/ready")
            logs = running.logs()
        assert status == 200, logs
        assert postgres_support.query(database, "SELECT version_num FROM alembic_version")
    finally:
        postgres_support.drop_database(name)
        remove_images(tag)


@pytest.mark.postgres
@pytest.mark.slow
def test_the_code_runs_as_app_service_builds_and_starts_it(copie_session, tmp_path):
    unreachable = postgres_support.unreachable_reason()
    need(not unreachable, unreachable)
    port = free_port()
    project = render(copie_session, azure="app-service-code", database="postgresql",
                     framework="flask", port=str(port))  # fmt: skip
    answers = answers_of(project)
    python = shutil.which(f"python{answers['python_version']}")
    need(python is not None, f"python{answers['python_version']} is not on PATH")
    site = resource(bicep(project / "infra" / "modules" / "appservice.bicep"), "app")
    config, settings = site["properties"]["siteConfig"], app_settings(site)

    # What the deployment uploads: the project without its virtual environment.
    app = tmp_path / "wwwroot"
    shutil.copytree(project, app, ignore=shutil.ignore_patterns(".venv", ".git"))
    venv = tmp_path / "antenv"
    run([python, "-m", "venv", str(venv)], tmp_path)
    run([str(venv / "bin" / "pip"), "install", "--quiet", "-r", "requirements.txt"], app,
        timeout=900)  # fmt: skip

    name = f"appcode_{uuid.uuid4().hex[:12]}"
    database = postgres_support.create_database(name)
    # The startup command, as App Service runs it: in the app's folder, venv activated.
    env = {key: value for key, value in settings.items() if "${" not in value}
    env = tool_env(
        DATABASE_URL=database, VIRTUAL_ENV=str(venv), METRICS_PORT=str(free_port()), **env
    )
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    log = (tmp_path / "service.log").open("w")
    # A session of its own: the startup command's shell execs gunicorn in a child, which a
    # signal to the shell alone would leave running.
    process = subprocess.Popen(
        ["sh", "-c", config["appCommandLine"]], cwd=app, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_process(f"http://127.0.0.1:{settings['PORT']}{config['healthCheckPath']}",
                         process, tmp_path / "service.log")  # fmt: skip
        assert postgres_support.query(database, "SELECT version_num FROM alembic_version")
        assert int(settings["PORT"]) == port
    finally:
        stop_session(process)
        postgres_support.drop_database(name)


def stop_session(process: subprocess.Popen, timeout: float = 40) -> None:
    """SIGTERM to every process of the session `process` leads; SIGKILL after `timeout`."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        process.poll()
        time.sleep(0.2)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_for_process(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the service exited {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            if http_get(url, timeout=2)[0] == 200:
                return
        time.sleep(0.3)
    pytest.fail(f"no 200 from {url} within {timeout} s:\n{log.read_text()}")
