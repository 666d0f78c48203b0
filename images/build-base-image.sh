#!/usr/bin/env bash
# Build a Debian bookworm base image for model containers without any container registry:
# debootstrap a minimal root filesystem from Debian's package mirrors, then `docker import` it.
# Hosts that can pull images do not need this: the default base image is python:3.11-slim.
#
#   images/build-base-image.sh [IMAGE]      (default modelserve-base:bookworm)
#   MODELSERVE_DOCKER_BASE_IMAGE=modelserve-base:bookworm modelserve up
#
# Skips the work when the image already exists, so CI can call it on every run.
set -euo pipefail
IMAGE="${1:-modelserve-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists; nothing to do"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
  echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
ROOT="$(mktemp -d /tmp/modelserve-base.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrapping Debian bookworm into $ROOT (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR"
# Keep the image small: package lists and caches are not needed at run time.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  - "$IMAGE"
echo "built base image $IMAGE"
