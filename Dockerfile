# One image for every pipeline stage (reid CLI), the KFP components and the MLflow server.
#
#   docker build -t reidflow:0.1.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#
# `make image` (containers/build-image.sh) builds it offline with podman: CPU by default,
# `make image VARIANT=cuda` for reidflow:0.1.0-cuda.
#
# Build arguments
#   BASE_IMAGE       any Debian-like image with python3 (3.11) and its venv module
#                    (buildah/podman: e.g. a debootstrapped localhost/debian-py:bookworm).
#   TORCH_SPEC       the torch requirement. The default is the CPU build: PyPI's Linux torch is the
#                    CUDA build (~2.8 GB more), so the CPU wheel comes from TORCH_INDEX_URL, whose
#                    `2.13.0+cpu` wins over PyPI's `2.13.0` for the same pin.
#   TORCH_INDEX_URL  extra index for torch; for a GPU image, e.g.
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
#   GPU_SPEC         for a CUDA image: packages that replace faiss-cpu, e.g.
#                    "faiss-gpu==1.15.1 tensorrt" (empty for the CPU image).
#   PIP_OPTS         extra pip options. Offline builds: inside containers on our machines pip
#                    cannot reach the registry (TLS interception), so download the wheels on the
#                    host into the build context first, then build with
#                      pip download --dest wheels --extra-index-url https://download.pytorch.org/whl/cpu \
#                          "torch==2.13.0" ".[all]" setuptools wheel  # on a Linux x86_64 host, Python 3.11
#                      docker build --build-arg PIP_OPTS="--no-index --find-links /wheels" .
#                    (the context's wheels/ folder is mounted at /wheels while installing; make
#                    image does all this).
#   GIT_COMMIT       the commit being built; becomes REID_GIT_COMMIT, which
#                    reid_core/tracking/lineage.py reads where there is no .git (inside containers).

ARG BASE_IMAGE=python:3.11-slim

# ---- build: resolve and install everything into a self-contained virtualenv ----------------------
FROM ${BASE_IMAGE} AS build

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_OPTS=""
ARG GPU_SPEC=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies first, in a layer of their own: a change to the sources rebuilds only the last step.
# They are setup.cfg's install_requires and its `all` extra: the image runs every stage.
# /wheels is the context's wheelhouse (only its README when building online), mounted for the
# steps that install, so its gigabytes never become a layer.
COPY setup.cfg pyproject.toml constraints.txt README.md /src/
RUN --mount=type=bind,source=wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && python3 -c 'import configparser; c = configparser.ConfigParser(); c.read("setup.cfg"); \
print(c["options"]["install_requires"], c["options.extras_require"]["all"])' > /tmp/requirements.txt \
    && /opt/venv/bin/pip install ${PIP_OPTS} --extra-index-url "${TORCH_INDEX_URL}" \
        -c constraints.txt "${TORCH_SPEC}" -r /tmp/requirements.txt \
    && if [ -n "${GPU_SPEC}" ]; then \
        /opt/venv/bin/pip uninstall -y -q faiss-cpu \
        && /opt/venv/bin/pip install ${PIP_OPTS} ${GPU_SPEC}; \
    fi

COPY reid_core /src/reid_core
RUN --mount=type=bind,source=wheels,target=/wheels \
    /opt/venv/bin/pip install ${PIP_OPTS} --no-deps . \
    && /opt/venv/bin/reid --help > /dev/null

# ---- runtime: the virtualenv only (no sources, wheelhouse or build tooling) -----------------------
FROM ${BASE_IMAGE} AS runtime

RUN groupadd --gid 10001 reid \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin reid \
    && mkdir -p /workspace \
    && chown reid:reid /workspace

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    GX_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    GIT_PYTHON_REFRESH=quiet

# Declared last so that a new commit does not invalidate the layers above.
ARG GIT_COMMIT=""
ENV REID_GIT_COMMIT=${GIT_COMMIT}
LABEL org.opencontainers.image.title="reidflow" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

USER 10001:10001
WORKDIR /workspace

ENTRYPOINT ["reid"]
CMD ["--help"]
