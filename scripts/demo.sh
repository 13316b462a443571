#!/usr/bin/env bash
# The main job, end to end, on the embedded default: installs what is missing (redis-server and
# a virtual environment; no PostgreSQL), then starts a local redis-server, one Celery worker and
# the API on localhost, trains a small teacher on the built-in digits data set, drives the whole
# HTTP flow with the client (upload, layers, representation, distillation, download, run the
# student), prints the accuracy table and where the artifacts are, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec "${BREGKD_VENV:-.venv}/bin/python" -m client.cli demo "$@"
