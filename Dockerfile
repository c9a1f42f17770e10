# The RLAD service image. The API, the Celery workers, beat and the migrations all run from it
# (docker-compose.yml gives each its command).
#
#   docker build -t rlad .       # torch==2.13.0 from PyPI: the CUDA build (GPU workers; runs on CPU too)
#   docker build -t rlad:cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .   # CPU-only torch
#
# TORCH_SPEC picks another torch (--build-arg TORCH_SPEC="torch==2.13.0"). vLLM rollouts (engine "vllm") need
# requirements/gpu.txt, which pins its own torch build: give them a separate image that installs
# `-r requirements/gpu.txt .` instead of TORCH_SPEC, not a layer on top of this one.
FROM python:3.11-slim

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# torch first, in its own layer: the project's `torch>=2.4` range is then satisfied and installs nothing more
RUN if [ -n "$TORCH_INDEX" ]; then pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"; \
    else pip install "$TORCH_SPEC"; fi

WORKDIR /app
# README.md: pyproject's `readme`; alembic.ini + migrations/: `alembic upgrade head` runs from /app
COPY pyproject.toml README.md alembic.ini ./
COPY rlad_core/ rlad_core/
COPY rlad/ rlad/
COPY store/ store/
COPY api/ api/
COPY workers/ workers/
COPY migrations/ migrations/
COPY configs/ configs/
RUN pip install . && rm -rf build ./*.egg-info

# non-root; /data (RLAD_DATA_DIR: beat's schedule file), /results (result store) and /hf-cache (Hugging Face
# downloads) are owned by it so that named volumes mounted there start out writable; /models is read-only
RUN groupadd --gid 1000 rlad \
 && useradd --uid 1000 --gid rlad --create-home rlad \
 && mkdir -p /data /results /hf-cache /models \
 && chown rlad:rlad /data /results /hf-cache
ENV RLAD_DATA_DIR=/data \
    HF_HOME=/hf-cache
USER rlad

EXPOSE 8321
CMD ["python", "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8321", \
     "--workers", "2", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
