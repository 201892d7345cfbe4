#!/usr/bin/env bash
# The main job: set up the environment, train the default model (a tiny linear-attention ViT) on the bundled
# synthetic shapes data (generated into data/shapes/cls on first use), evaluate the saved checkpoint with
# tools/test.py, and print where the checkpoint, logs and metrics are.
#   bash tools/run_demo.sh [CONFIG]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CONFIG=${1:-configs/linear_vit/linear-vit-t_shapes-cls.py}
WH=${VLA_WHEELHOUSE:-}
if [ -z "$WH" ] && [ -d "$ROOT/../shared/wheels/cpu-py311-torch2.14.1" ]; then
  WH=$ROOT/../shared/wheels/cpu-py311-torch2.14.1
fi
VLA_WHEELHOUSE=$WH bash tools/setup_env.sh
PY=${VLA_VENV:-$ROOT/.venv}/bin/python
[ "${VLA_VENV:-}" = system ] && PY=python3
NAME=$(basename "$CONFIG" .py)
WORK=work_dirs/$NAME
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK"
CKPT=$(cat "$WORK/last_checkpoint")
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/test"
echo
echo "checkpoint: $CKPT"
echo "train logs: $(ls -d "$WORK"/2*/ | tail -n 1)"
echo "metrics:    $WORK/test/test_metrics.json"
