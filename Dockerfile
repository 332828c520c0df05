# The asrn-ray image that cluster/kuberay/*.yaml name: this project and its locked environment (`make env`,
# i.e. `uv sync --frozen` from uv.lock) on Python 3.11, the venv first on PATH.
#
#   docker build -t REGISTRY/asrn-ray:latest .                        # CUDA torch (GPU nodes; ~3 GB more)
#   docker build --build-arg TORCH=cpu -t REGISTRY/asrn-ray:cpu .     # CPU-only torch (`make env TORCH=cpu`)
#
# The CUDA variant needs no CUDA base image: the locked torch wheels carry their CUDA libraries (nvidia-*
# packages), and the NVIDIA container runtime provides the driver. tests/test_cluster.py runs this file's
# install command against uv.lock; the image itself is not built in CI.
FROM python:3.11-slim-bookworm

# a pinned uv; make for `make env`; wget for KubeRay's health probes
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
RUN apt-get update && apt-get install -y --no-install-recommends make wget \
    && rm -rf /var/lib/apt/lists/*

ARG TORCH=
ENV UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    PATH=/app/.venv/bin:$PATH

RUN useradd --create-home --uid 1000 ray && mkdir /app && chown ray /app
USER ray
WORKDIR /app
COPY --chown=ray . /app
RUN --mount=type=cache,target=/home/ray/.cache/uv,uid=1000 \
    make env TORCH=${TORCH} PYTHON_VERSION=3.11 && .venv/bin/python -c "import asrn, ray, torch, mlflow"
