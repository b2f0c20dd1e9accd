#!/usr/bin/env bash
# `make image`: builds reidflow:<version> (VARIANT=cpu, the default) or reidflow:<version>-cuda
# (VARIANT=cuda) from the Dockerfile with podman, or docker where podman is absent.
#
# The wheels are resolved on the host into build/wheels-<variant> and handed to the build as the
# context's wheels/ folder, so the build itself needs no network (pip inside containers cannot
# reach the registry on every machine). The host must therefore be Linux x86_64 with Python 3.11,
# like the image. The base image is BASE_IMAGE if set, else python:3.11-slim when a registry
# answers, else a Debian bookworm image made offline by base-image.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=${VARIANT:-cpu}
python=${PYTHON:-python3}
version=$("$python" -c 'import configparser; c = configparser.ConfigParser(); c.read("setup.cfg"); print(c["metadata"]["version"])')
case "$variant" in
  cpu)  tag=reidflow:$version ;;
  cuda) tag=reidflow:$version-cuda ;;
  *) echo "build-image.sh: VARIANT must be cpu or cuda, not '$variant'" >&2; exit 1 ;;
esac

# ---- the container tool -----------------------------------------------------------------------
if ! command -v podman >/dev/null && ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "build-image.sh: installing podman, buildah, runc and debootstrap (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap >/dev/null
  else
    echo "build-image.sh: no container tool: install podman (or run a Docker daemon)" >&2
    exit 1
  fi
fi
if command -v podman >/dev/null; then
  tool=podman
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/containers/containers.conf}
else
  tool=docker
fi

# ---- the base image ---------------------------------------------------------------------------
offline_base=localhost/debian-py:bookworm
base=${BASE_IMAGE:-}
if [ -z "$base" ]; then
  if "$tool" image inspect python:3.11-slim >/dev/null 2>&1 || "$tool" pull -q python:3.11-slim >/dev/null 2>&1; then
    base=python:3.11-slim
  else
    if ! "$tool" image inspect "$offline_base" >/dev/null 2>&1; then
      echo "build-image.sh: no registry reachable; making $offline_base with debootstrap"
      CONTAINER_TOOL=$tool containers/base-image.sh "$offline_base"
    fi
    base=$offline_base
  fi
fi

# ---- the wheelhouse ---------------------------------------------------------------------------
# CPU: torch's CPU build (download.pytorch.org, or the local wheel pip is configured with).
# CUDA: PyPI's torch (a CUDA build), with any local CPU wheel pip's configuration adds (find-links
# in a config file or the environment) kept out of the way.
wheels=build/wheels-$variant
mkdir -p "$wheels"
gpu_spec=""
if [ "$variant" = cuda ]; then
  gpu_spec="faiss-gpu==1.15.1"
  export PIP_FIND_LINKS="" PIP_CONFIG_FILE=/dev/null
  "$python" -m pip download -q -d "$wheels" -c constraints.txt \
    torch==2.13.0 $gpu_spec ".[all]" setuptools wheel
  # TensorRT's PyPI packages are sources that fetch NVIDIA's libraries while installing: where
  # that fails (no NVIDIA index or driver tools), the image goes without TensorRT.
  tensorrt=${TENSORRT_SPEC:-tensorrt-cu12}
  if "$python" -m pip download -q -d "$wheels" "$tensorrt" >/dev/null 2>&1; then
    gpu_spec="$gpu_spec $tensorrt"
  else
    echo "build-image.sh: $tensorrt does not install on this machine; the image has no TensorRT"
  fi
else
  # PyTorch's CPU index where it answers; otherwise the CPU wheel must come from pip's own
  # configuration (find-links), as on machines that keep one locally.
  torch_index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
  index_opts=()
  if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$torch_index/" 2>/dev/null; then
    index_opts=(--extra-index-url "$torch_index")
  fi
  "$python" -m pip download -q -d "$wheels" -c constraints.txt "${index_opts[@]}" \
    torch==2.13.0 ".[all]" setuptools wheel
fi
clear_wheelhouse() { find wheels -maxdepth 1 -type f ! -name README.md -delete; }
clear_wheelhouse
trap clear_wheelhouse EXIT
cp -l "$wheels"/* wheels/ 2>/dev/null || cp "$wheels"/* wheels/

# ---- the build --------------------------------------------------------------------------------
echo "build-image.sh: building $tag on $base with $tool"
start=$(date +%s)
"$tool" build -t "$tag" -f Dockerfile \
  --build-arg BASE_IMAGE="$base" \
  --build-arg PIP_OPTS="--no-index --find-links /wheels" \
  --build-arg GPU_SPEC="$gpu_spec" \
  --build-arg GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)" \
  .
if [ "$variant" = cuda ]; then  # a CPU wheel slipping into the wheelhouse would pass silently
  "$tool" run --rm --entrypoint python "$tag" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' \
    || { echo "build-image.sh: $tag holds a CPU build of torch" >&2; exit 1; }
fi
size=$("$tool" image inspect "$tag" --format '{{.Size}}')
echo "build-image.sh: $tag built in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
