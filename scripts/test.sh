#!/usr/bin/env bash
# The whole test suite on a fresh machine. Installs what is missing, runs every test with the
# embedded default (SQLite records), then runs the end-to-end tests a second time with the
# records in PostgreSQL. Every server the tests start (redis-server, postgres, Celery workers,
# uvicorn) is started and stopped by the test fixtures themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

python3 -m pytest tests "$@"

# pytest exits 5 when no test is selected; that only means no end-to-end test exists yet.
rc=0
BREGKD_TEST_DATABASE=postgresql python3 -m pytest -m e2e tests "$@" || rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
