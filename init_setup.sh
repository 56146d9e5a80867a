#!/usr/bin/env bash
# Create .venv/ in the repo root with the project and its test extra installed.
# Safe to run again: an existing venv is reused and pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# The C engine is built in place by pip: a changed source must rebuild it, or workers would
# fall back to the slower hashlib loop (they log why).
stamp=.venv/.installed-$(cat setup.cfg setup.py workerapp/_sha512chain.c 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test]'
    rm -f .venv/.installed-* && touch "$stamp"
fi
echo "ready: .venv ($(.venv/bin/python --version))"
