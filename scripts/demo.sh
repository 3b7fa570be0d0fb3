#!/usr/bin/env bash
# The README's first command: create (or reuse) .venv, install emoset-peft, run the demo study
# (synthetic EmoSet + a tiny pretrained ViT; about 2-3 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# constraints.txt: the versions the test suite last passed with (see its header).
"$VENV/bin/python" -m pip install -q -c constraints.txt --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt -e .
exec "$VENV/bin/emoset-peft" demo "$@"
