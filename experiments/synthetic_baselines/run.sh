#!/usr/bin/env bash
# Trains the three synthetic_actions configs one after the other and prints
# each one's overall and per-pair test accuracy. Usage:
#   bash experiments/synthetic_baselines/run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/hpr/synthetic_baselines}
for name in lrcn_synthetic convlstm_synthetic single_frame_synthetic; do
  /usr/bin/time -f "$name: %e s wall" \
    python -m hpr.main --config "configs/$name.py" --workdir "$out/$name"
  python -m experiments.synthetic_baselines.pairs "$out/$name"
done
