#!/usr/bin/env bash
# Trains the ConvLSTM encoder-forecaster on 32x32 moving digits and scores it
# and the baselines on the fixed test set (the README's table). Usage:
#   bash experiments/next_frame/run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/next_frame/out}
mkdir -p "$out"
/usr/bin/time -f 'wall: %e s' python -m experiments.next_frame.train \
  --steps 800 --batch_size 16 --seed 0 --size 32 --scale 2 --patch 4 \
  --features 32,32 --kernel_size 3 --learning_rate 2e-3 --out "$out" \
  2>&1 | tee "$out/console.txt"
