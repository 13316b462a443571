#!/usr/bin/env bash
# Installs what the project needs, skipping what is already there:
#
#   bash scripts/setup.sh [test|demo]      (default: test)
#
# 1. Debian packages: redis-server (demo and tests), PostgreSQL (tests only: the end-to-end
#    tests run a second time on it) and python3-venv when the interpreter lacks venv/ensurepip.
#    As root they are installed with apt-get; otherwise the script names the command to run.
# 2. A virtual environment (default .venv, or $BREGKD_VENV) made with $PYTHON (default python3),
#    so that an externally managed system Python (PEP 668, Debian 12+ / Ubuntu 23.04+) is never
#    written to. torch is installed first and pinned, so that pip takes the CPU build that lies
#    on disk instead of downloading a CUDA build; then the project with every extra.
# The environment is reused while the interpreter and pyproject.toml are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

purpose="${1:-test}"
case "$purpose" in test|demo) ;; *) echo "usage: bash scripts/setup.sh [test|demo]" >&2; exit 2 ;; esac
PYTHON="${PYTHON:-python3}"
VENV="${BREGKD_VENV:-.venv}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup: no Python interpreter '$PYTHON' (set PYTHON to a Python 3.11+ executable)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); bregkd needs 3.11 or newer (set PYTHON)" >&2
    exit 1
fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "$purpose" = test ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${BREGKD_PG_BIN:-}" ]; then
    missing+=(postgresql)
fi
# Debian splits venv and ensurepip out of its python3 package
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=("python3-venv")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        # The packages start system-wide services; the tests and the demo start their own.
        (service redis-server stop; service postgresql stop) >/dev/null 2>&1 || true
    else
        echo "setup: missing ${missing[*]}. Install with:  sudo apt-get install -y ${missing[*]}" >&2
        [ "$purpose" = demo ] || echo "setup: (PostgreSQL is needed by the tests only; 'bash scripts/demo.sh' runs without it)" >&2
        exit 1
    fi
fi

stamp="$VENV/.bregkd-setup"
want="$("$PYTHON" -c 'import sys; print(sys.executable, sys.version)') $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
# an environment made by another interpreter (or by a run that did not finish) starts again
if [ -e "$VENV" ] && [ "$(cut -d' ' -f1 "$stamp" 2>/dev/null)" != "${want%% *}" ]; then
    rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() {  # quiet; drops pip's notes about index locations absent on this machine
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" \
        2> >(grep -v -e "is ignored: it is neither a file nor a directory" -e "Running pip as the 'root' user" >&2)
}
pip_install 'torch==2.13.0'
pip_install -e '.[dev]'
echo "$want" > "$stamp"
