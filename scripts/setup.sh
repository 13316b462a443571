#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, skipping what is already there:
# redis-server and PostgreSQL (the end-to-end tests start their own instances), then the
# Python package with every extra. torch is installed first and pinned, so that pip takes the
# CPU build that lies on disk instead of downloading a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql >/dev/null
        # The packages start system-wide services; the tests start their own on free ports.
        (service redis-server stop; service postgresql stop) >/dev/null 2>&1 || true
    else
        echo "redis-server and postgresql are missing: install them (apt-get install redis-server postgresql) or run as root" >&2
        exit 1
    fi
fi

python3 -m pip install -q --disable-pip-version-check 'torch==2.13.0'
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
