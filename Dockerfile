# Reproducible training image: the pinned requirements and the converted default model, baked in.
#   docker build -t open_rlhf .
#   docker run --rm -v $PWD/runs:/app/runs open_rlhf make pipeline        # or: make test
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 OPEN_RLHF_HOME=/opt/open_rlhf PYTHONUNBUFFERED=1

# CPU torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for CUDA
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt pyproject.toml README.md ./
COPY open_rlhf/__init__.py open_rlhf/__init__.py
RUN python -m venv .venv \
    && .venv/bin/pip install torch==2.13.0 --index-url ${TORCH_INDEX} \
    && .venv/bin/pip install -r requirements.txt

COPY . .
RUN .venv/bin/pip install --no-deps -e . && touch .venv/.installed && .venv/bin/python -m open_rlhf.models
CMD ["make", "pipeline"]
