"""The render's container image: what its Dockerfile adds to the base, and how fast it rebuilds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from projects import ROOT

DOCKER_UP = ROOT.parent / "shared" / "docker-offline" / "up"
REBUILDS = 3


def _docker_answers(env: dict[str, str]) -> bool:
    try:
        return (
            subprocess.run(["docker", "info"], env=env, capture_output=True, check=False).returncode
            == 0
        )
    except FileNotFoundError:
        return False


def docker_env() -> tuple[dict[str, str] | None, str]:
    """The environment for the docker client, or None and why there is no engine.

    The engine in place is used; only when there is none does this call the machine's
    docker-offline script (which starts one), as the CI does.
    """
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    if _docker_answers(env):
        return env, "the running engine"
    if not DOCKER_UP.exists():
        return None, "no Docker engine answers `docker info`"
    print(f"bench: no Docker engine answers: starting one with {DOCKER_UP}", flush=True)
    up = subprocess.run(
        [str(DOCKER_UP)], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    for name, value in re.findall(r'^export (\w+)="?([^"\n]*)"?$', up.stdout, re.MULTILINE):
        env[name] = value.replace("$PATH", os.environ.get("PATH", ""))
    if up.returncode == 0 and _docker_answers(env):
        return env, str(DOCKER_UP)
    return None, f"{DOCKER_UP} failed ({up.returncode}): {up.stderr.strip()[-500:]}"


def _docker(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    result = subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {result.returncode}\n{result.stderr}")
    return result.stdout


def _build(env: dict[str, str], context: Path, tag: str, *options: str) -> float:
    started = time.perf_counter()
    _docker(env, "build", "--network", "host", "--tag", tag, *options, str(context))
    return time.perf_counter() - started


def _image_id(env: dict[str, str], image: str) -> str:
    return _docker(env, "image", "inspect", "--format", "{{.Id}}", image).strip()


def _layer_sizes(env: dict[str, str], image: str) -> list[int]:
    """The sizes in bytes of the image's history entries, newest first."""
    listed = _docker(env, "history", "--no-trunc", "--human=false", "--format", "{{.Size}}", image)
    return [int(size) for size in listed.split()]


def _layers(env: dict[str, str], image: str) -> dict[str, int]:
    """The image's layers: the digest of each (its diff id) and the bytes of its tar.

    The sizes come from `docker save`, whose layer tars are listed in manifest.json in the
    order of the image's RootFS layers.
    """
    listed = _docker(env, "image", "inspect", "--format", "{{json .RootFS.Layers}}", image)
    diff_ids = json.loads(listed)
    sizes: dict[str, int] = {}
    manifest = None
    saving = subprocess.Popen(["docker", "save", image], env=env, stdout=subprocess.PIPE)
    with saving, tarfile.open(fileobj=saving.stdout, mode="r|") as archive:
        for member in archive:
            if member.name.endswith("layer.tar"):
                sizes[member.name] = member.size
            elif member.name == "manifest.json":
                manifest = json.load(archive.extractfile(member))
    if saving.returncode != 0 or manifest is None:
        raise RuntimeError(f"docker save {image} failed ({saving.returncode})")
    tars = manifest[0]["Layers"]
    return {diff_id: sizes.get(tar, 0) for diff_id, tar in zip(diff_ids, tars, strict=True)}


def changed_bytes(before: dict[str, int], after: dict[str, int]) -> int:
    """The bytes of the layers an image has that the one before it has not: what a push sends."""
    return sum(size for diff_id, size in after.items() if diff_id not in before)


def runtime_base(dockerfile: Path) -> str:
    """The image the last stage starts FROM."""
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    return froms[-1]


def own_cache_mounts(dockerfile: Path, token: str) -> None:
    """Give each cache mount of the Dockerfile an id of its own, so that it starts out empty.

    The build then downloads its packages as on a fresh machine, and the shared cache mount
    (uv's, which other builds on this engine use) is neither used nor wiped.
    """

    def with_own_id(match: re.Match) -> str:
        options = [o for o in match.group(1).split(",") if not o.startswith("id=")]
        target = next(o.split("=", 1)[1] for o in options if o.startswith("target="))
        return f"--mount=type=cache,id={token}{target}," + ",".join(options)

    text = dockerfile.read_text()
    dockerfile.write_text(re.sub(r"--mount=type=cache,(\S+)", with_own_id, text))


def _cache_mount_records(env: dict[str, str]) -> set[str]:
    listed = _docker(env, "system", "df", "--verbose", "--format", "{{json .BuildCache}}")
    return {item["ID"] for item in json.loads(listed) if item["CacheType"] == "exec.cachemount"}


def measure_image(env: dict[str, str], project: Path, workdir: Path, tag: str) -> dict:
    """An empty-cache build, then rebuilds after changes to routes.py only; sizes and times, and
    the bytes of the layers each rebuild changed.

    The empty-cache build is `--no-cache` with cache mounts of its own (see own_cache_mounts).
    The base images are on the machine already: on a fresh machine they are pulled too, so the
    empty-cache time is a lower bound, and the rebuild's speed-up is too.
    """
    context = workdir / "image"
    shutil.copytree(project, context, ignore=shutil.ignore_patterns(".venv", ".git", "data"))
    own_cache_mounts(context / "Dockerfile", tag.replace(":", "-"))
    app = next(context.glob("src/*/routes.py"))
    mounts_before = _cache_mount_records(env)
    built = []
    try:
        empty_cache_s = _build(env, context, tag, "--no-cache")
        built.append(_image_id(env, tag))
        image_sizes = _layer_sizes(env, tag)
        base = runtime_base(context / "Dockerfile")
        base_sizes = _layer_sizes(env, base)
        added = sum(image_sizes[: len(image_sizes) - len(base_sizes)])
        layers = _layers(env, tag)
        rebuilds_s = []
        changed = []
        for number in range(1, REBUILDS + 1):
            app.write_text(
                app.read_text() + f"\n# Application-code change {number}, by the bench.\n"
            )
            rebuilds_s.append(_build(env, context, tag))
            built.append(_image_id(env, tag))
            layers, before = _layers(env, tag), layers
            changed.append(changed_bytes(before, layers))
    finally:
        # The images go, and so do this run's own cache mounts; cached layers stay, as after
        # any build.
        for image in dict.fromkeys(built):
            removed = subprocess.run(
                ["docker", "rmi", "--force", image], env=env, capture_output=True, check=False
            )
            if removed.returncode != 0:
                print(f"bench: could not remove image {image}: {removed.stderr.strip()}")
        for record in _cache_mount_records(env) - mounts_before:
            _docker(env, "builder", "prune", "--force", "--filter", f"id={record}")
    return {
        "base": base,
        "added_bytes": added,
        "empty_cache_build_s": empty_cache_s,
        "rebuilds_after_app_change_s": rebuilds_s,
        "changed_layer_bytes": changed,
    }
