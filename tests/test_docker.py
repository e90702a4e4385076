"""The Docker image: the Dockerfile copies every folder the product needs, and (slow) `make docker-test` builds the
image and runs `make test` and the smoke pipeline inside it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# In the repository but not needed in the image: CI's script and git's own files
NOT_IN_IMAGE = {".ci", ".docker-wheels", ".dockerignore", ".gitignore", "Dockerfile"}  # .docker-wheels: bind-mounted in the build, never copied


def _copied_paths() -> set[str]:
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"COPY\s+(.+)\s+\S+$", line.strip())
        if match and "--from" not in line:
            copied.update(p.rstrip("/") for p in match.group(1).split())
    return copied


def test_dockerfile_copies_every_tracked_top_level_path():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top_level = {line.split("/")[0] for line in tracked.splitlines() if line}
    missing = top_level - NOT_IN_IMAGE - _copied_paths()
    assert not missing, f"Dockerfile: add a COPY line for {sorted(missing)} (or list it in NOT_IN_IMAGE here)"


def test_dockerignore_keeps_the_local_torch_wheel_in_the_context():
    """The build bind-mounts .docker-wheels/ from the context; ignoring it would make every build download torch."""
    if not (ROOT / ".dockerignore").is_file():
        pytest.skip("no .dockerignore here (inside the image, which copies only the product's folders)")
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert not any(p.strip("/").startswith(".docker-wheels") for p in ignored)
    assert ".venv" in ignored and "runs" in ignored


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_make_docker_test_builds_and_passes_inside_the_image():
    """`make docker-test`: build (base image from Debian's packages when no registry), `make test` in the image,
    then the 2-step smoke pipeline with runs/ mounted. About 20-30 min on 2 cores."""
    if not _docker_daemon():
        pytest.skip("no Docker daemon answers `docker info` (Debian: apt-get install docker.io; dockerd &)")
    base = subprocess.run(["make", "docker-base"], cwd=ROOT, capture_output=True, text=True)
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    result = subprocess.run(["make", "docker-test"], cwd=ROOT, capture_output=True, text=True, timeout=3 * 3600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "docker-test: the image passed make test" in output
    assert re.search(r"\d+ passed", output)
