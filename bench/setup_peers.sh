#!/usr/bin/env bash
# The benchmark's own tools: redis-server and wrk from Debian, RQ/Celery/profilers in bench/.venv-peers.
# None of this is a dependency of the project (setup.cfg does not list it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null || ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server wrk
fi
[ -x bench/.venv-peers/bin/python ] || python3.11 -m venv bench/.venv-peers
bench/.venv-peers/bin/python -m pip install -q \
    "rq==3.0.0" "celery==5.7.0" "redis==8.1.0" packaging "py-spy==0.4.3" "pyinstrument==5.1.3"
echo "bench/.venv-peers ready: $(bench/.venv-peers/bin/python -m pip list 2>/dev/null | grep -iE '^(rq|celery|redis) ' | tr -s ' ' | paste -sd, -)"
