#!/usr/bin/env bash
# Builds a minimal Debian bookworm image with python3 (3.11) and its venv module from the Debian
# mirror apt already uses, for machines that reach no image registry. Usage: base-image.sh TAG
set -euo pipefail
tag=${1:?usage: base-image.sh TAG}
tool=${CONTAINER_TOOL:-podman}

mirror=${DEBIAN_MIRROR:-$(
  grep -rhE '^(deb|URIs:) ' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true
)}
[ -n "$mirror" ] || { echo "base-image.sh: no Debian mirror found in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "base-image.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
rootfs=$scratch/rootfs
echo "base-image.sh: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" \
  > "$scratch/debootstrap.log" 2>&1 || { tail -n 20 "$scratch/debootstrap.log" >&2; exit 1; }
# apt's package lists and downloaded .debs are not part of a base image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | "$tool" import - "$tag" >/dev/null
echo "base-image.sh: $tag"
