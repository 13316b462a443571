# syntax=docker/dockerfile:1.6
# One image for the API and the workers (the command picks the role; see docker-compose.yml).
#
# CPU (default):   docker build -t bregkd:cpu .
# CUDA:            docker build -t bregkd:cuda --build-arg TORCH_VARIANT=cu128 .
#   TORCH_VARIANT names a wheel index under https://download.pytorch.org/whl/ (cpu, cu126,
#   cu128, ...) that publishes torch==${TORCH_VERSION}. The CUDA wheels carry their own CUDA
#   runtime, so the base image stays python:3.11-slim; the host needs only the NVIDIA driver and
#   the NVIDIA Container Toolkit. To build on a CUDA base image instead (e.g. to add cuDNN
#   tools), pass --build-arg BASE_IMAGE=<an image with Python 3.11 at /usr/local/bin/python3.11>.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
# torch first, pinned, from the chosen variant's index: resolving the extras below then keeps it
# instead of pulling the default (CUDA) build from PyPI.
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}"
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bregman/ bregman/
COPY api_schemas/ api_schemas/
COPY storage/ storage/
COPY service/ service/
COPY workers/ workers/
COPY client/ client/
# editable: the Alembic migrations (storage/migrations, storage/alembic.ini) are read from /app
RUN pip install -e ".[service,worker,client]" \
 && python -c "import torch, bregman, service.app, workers.celery_app, client.cli; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE} AS runtime
RUN useradd --create-home --uid 1000 bregkd \
 && mkdir -p /data \
 && chown bregkd:bregkd /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    BREGKD_DATA_DIR=/data
WORKDIR /app
USER bregkd
VOLUME ["/data"]
EXPOSE 8000
# The API; the worker overrides this with `celery -A workers.celery_app worker ...`.
# The timed h11 protocol closes connections whose headers or bodies stall (service/http_protocol.py);
# the same flags as service.stack.UVICORN_LIMIT_FLAGS.
CMD ["uvicorn", "--factory", "service.app:create_app", "--host", "0.0.0.0", "--port", "8000", \
     "--http", "service.http_protocol:TimedH11Protocol", "--timeout-keep-alive", "5", "--h11-max-incomplete-event-size", "16384"]
