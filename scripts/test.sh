#!/usr/bin/env bash
# The README's test command: create (or reuse) a virtual environment, install emoset-peft with
# its test tools, run the whole suite. VENV picks the environment's folder (default: .venv);
# .ci/run points it at a fresh temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# constraints.txt: the versions the suite last passed with, so an upstream release cannot break it.
"$VENV/bin/python" -m pip install -q -c constraints.txt --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]"
# Lint and format first (seconds): the same checks a reviewer runs, configured in pyproject.toml.
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
exec "$VENV/bin/python" -m pytest -q "$@"
