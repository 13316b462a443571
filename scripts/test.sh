#!/usr/bin/env bash
# The whole test suite on a fresh machine. Installs what is missing (scripts/setup.sh: Debian
# packages and a virtual environment, default .venv), runs every test with the embedded default
# (SQLite records), then runs the end-to-end tests a second time with the records in PostgreSQL.
# Every server the tests start (redis-server, postgres, Celery workers, uvicorn) is started and
# stopped by the test fixtures themselves. PYTHON picks the interpreter of the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
py="${BREGKD_VENV:-.venv}/bin/python"

"$py" -m pytest tests "$@"
# Every exit status counts here, 5 ("no tests collected") included: a marker mistake must not
# silently skip the end-to-end tests.
# (the scale-out test starts its own PostgreSQL and so already ran on it in the first pass)
BREGKD_TEST_DATABASE=postgresql "$py" -m pytest -m e2e tests --ignore=tests/e2e/test_scaleout.py "$@"
