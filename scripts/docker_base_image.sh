#!/usr/bin/env bash
# Build a local Docker base image from Debian's own packages, for machines that reach Debian's mirrors but no image
# registry (`docker pull python:3.11-slim` impossible). Debian bookworm's python3 is 3.11, the version the project
# pins. Needs root, debootstrap and a running Docker daemon; about 290 MB.
#   scripts/docker_base_image.sh [IMAGE_NAME] [SUITE] [MIRROR]      (make docker-base)
set -euo pipefail
name=${1:-open_rlhf-base:bookworm}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (Debian: apt-get install debootstrap docker.io)" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "error: no Docker daemon answers (start one: dockerd &, or systemctl start docker)" >&2; exit 1; }
if docker image inspect "$name" >/dev/null 2>&1; then
    echo "$name exists; remove it first (docker rmi $name) to rebuild it"
    exit 0
fi
root=$(mktemp -d /tmp/open_rlhf-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,make,ca-certificates "$suite" "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$name"
docker image ls "$name"
