#!/usr/bin/env bash
# Exports synthetic_actions/small_video as a folder, fits the two
# logistic-regression baselines, trains configs/small_video.py with three
# seeds and prints mean ± std. Usage:
#   bash experiments/small_video/run.sh [OUT_DIR] [DATASET_SEED]
# (pip install -r experiments/small_video/requirements.txt first).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/hpr/small_video}
seed=${2:-}
folder=$out/folder${seed}
data_dir=$out/tfds
python -m hpr.tools.export_synthetic --dataset synthetic_actions/small_video \
  --out "$folder" --data_dir "$data_dir" ${seed:+--seed "$seed"}
python -m experiments.small_video.baselines --root "$folder" \
  --data_dir "$data_dir" --out "$out/baselines${seed}.json"
runs=()
for s in 0 1 2; do
  /usr/bin/time -f "seed $s: %e s wall" \
    python -m hpr.main --config configs/small_video.py \
      --workdir "$out/recipe${seed}_s$s" --config.seed="$s" \
      --config.dataset.video_folder.root="$folder" \
      --config.dataset.data_dir="$data_dir"
  runs+=("$out/recipe${seed}_s$s")
done
python -m experiments.small_video.pairs "${runs[@]}"
