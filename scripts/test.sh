#!/usr/bin/env bash
# Set up (in the active virtual environment, or ./.venv) and run the test suite.
# This is the README's test command; .ci/run calls it in a fresh virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -d .venv ] || python3 -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[dev]"
exec python -m pytest -q "$@"
