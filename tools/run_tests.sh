#!/usr/bin/env bash
# Set up the environment (tools/setup_env.sh) and run the whole test suite on the CPU.
#   bash tools/run_tests.sh [pytest args...]
# Uses ../shared/wheels/cpu-py311-torch2.14.1 as the mmcv wheelhouse when it exists (else builds mmcv).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
WH=${VLA_WHEELHOUSE:-}
if [ -z "$WH" ] && [ -d "$ROOT/../shared/wheels/cpu-py311-torch2.14.1" ]; then
  WH=$ROOT/../shared/wheels/cpu-py311-torch2.14.1
fi
VLA_WHEELHOUSE=$WH bash tools/setup_env.sh
PY=${VLA_VENV:-$ROOT/.venv}/bin/python
[ "${VLA_VENV:-}" = system ] && PY=python3
set +e
"$PY" -m pytest tests -ra --durations=20 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "run_tests.sh: no test ran" >&2; exit 1; fi
exit "$rc"
