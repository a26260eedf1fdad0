#!/usr/bin/env bash
# hpr against PyTorch (eager and torch.compile) on one GPU: training clips/s
# of the notebook's ConvLSTM and LRCN at batch 32 and 256.
#
#   bash benchmarks/gpu_sitting.sh           # results under $OUT, else benchmarks/results
#   QUICK=1 bash benchmarks/gpu_sitting.sh   # smoke test: 3 timed steps
#
# On a machine with an NVIDIA GPU. It uses the Python packages the machine
# has and installs only what is missing: JAX with CUDA (jax[cuda12]),
# PyTorch with CUDA (torch==2.13.0 from PyPI, whose Linux wheels are CUDA
# builds) and hpr's pure-Python needs. hpr itself runs from this checkout
# (train_speed.py puts it first on sys.path); its CPU kernels are neither
# built nor used on a GPU. Without a network, wheels carried in .whl/ are
# installed first (to /tmp/site): e.g. ml_collections, which GPU images
# with JAX and PyTorch tend to lack:
#   pip download --no-deps --only-binary=:all: -d .whl ml_collections
#
# Steps, in this order so that hpr's numbers are saved first:
#  1. hpr: train_speed.py --batch_sizes 32,256 --extras=off (no FLOP count
#     or cached-compile run: the sitting's table has the analytic FLOPs)
#     -> $OUT/train_speed_gpu.json
#  2. the peers, once (a dedicated GPU does not drift as the shared CPU VMs
#     do): sitting.py --passes 1 --hpr_json <1> --peers torch-eager,torch-compile
#     -> $OUT/sitting_<UTC>_gpu_<device kind>.json, rewritten after each
#     peer, and its Markdown table in $OUT/gpu_sitting.md.
# PyTorch runs with cudnn.benchmark and TF32 allowed for float32 matmuls and
# convolutions: JAX's default precision on GPUs (TF32) and autotuning.
# Planned to take 6-8 minutes on an H100; each peer process is cut at
# PEER_TIMEOUT seconds (its finished batch sizes are kept).
#
# Settings (environment): OUT, PYTHON (python3), PEERS_PYTHON ($PYTHON),
# BATCHES (32,256), PEERS (torch-eager,torch-compile), PEER_TIMEOUT (200),
# QUICK, ALLOW_CPU=1 (the same steps on a machine without a GPU, to check
# this script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
PEERS_PY=${PEERS_PYTHON:-$PY}
BATCHES=${BATCHES:-32,256}
PEER_TIMEOUT=${PEER_TIMEOUT:-200}
PEERS=${PEERS:-torch-eager,torch-compile}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_sitting.log") 2>&1
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
start=$SECONDS
say() { echo "gpu_sitting [$((SECONDS - start)) s]: $*"; }
ok() { "$1" -c "$2" >/dev/null 2>&1; }
PIP_NET='--retries 1 --timeout 20'  # Fail fast where there is no network.

if compgen -G '.whl/*.whl' >/dev/null; then
  say "installing the carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [[ ${ALLOW_CPU:-0} == 1 ]]; then
  device=cpu
else
  device=cuda
  nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || say 'no nvidia-smi'
  if ! ok "$PY" 'import jax; assert jax.default_backend() == "gpu"'; then
    say 'JAX sees no GPU: installing jax[cuda12]'
    "$PY" -m pip install -q $PIP_NET 'jax[cuda12]>=0.10,<0.11'
    if ! ok "$PY" 'import jax; assert jax.default_backend() == "gpu"'; then
      say 'JAX still sees no GPU; stopping (ALLOW_CPU=1 runs on a CPU)'
      exit 1
    fi
  fi
  if ! ok "$PEERS_PY" 'import torch; assert torch.cuda.is_available()'; then
    say 'PyTorch sees no GPU: installing torch==2.13.0'
    "$PEERS_PY" -m pip install -q $PIP_NET torch==2.13.0 ||
      say 'no PyTorch with CUDA: the peers will fail, hpr is still measured'
  fi
fi
# hpr's imports for the train step (no TensorFlow needed).
hpr_imports='import sys; sys.path.insert(0, "."); from hpr import cli, parallel, train_state'
for _ in 1 2 3 4 5; do
  missing=$("$PY" -c "$hpr_imports" 2>&1 | sed -n "s/.*No module named '\([^'.]*\).*/\1/p" | tail -1)
  [[ -z $missing ]] && break
  say "hpr needs $missing: installing it"
  "$PY" -m pip install -q $PIP_NET "$missing" || break
done
if ! "$PY" -c "$hpr_imports"; then
  say "hpr does not import with $PY; stopping"
  exit 1
fi
"$PY" - <<'EOF'
import importlib.metadata as md
names = ('jax', 'jaxlib', 'flax', 'optax', 'ml_collections', 'numpy')
print('versions:', ', '.join(f'{n} {md.version(n)}' for n in names))
EOF
ok "$PEERS_PY" 'import torch' &&
  "$PEERS_PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

quick=()
steps=(--steps=20 --warmup=3)
if [[ -n ${QUICK:-} ]]; then
  quick=(--quick)
  steps=(--steps=3 --warmup=1)
fi

say "1. hpr's train_speed.py at batch $BATCHES"
"$PY" benchmarks/train_speed.py --models=seed_convlstm,seed_lrcn \
  --batch_sizes="$BATCHES" "${steps[@]}" --extras=off \
  --json="$OUT/train_speed_gpu.json" || { say 'train_speed.py failed'; exit 1; }

say "2. PyTorch eager and torch.compile at batch $BATCHES"
"$PY" benchmarks/sitting.py "${quick[@]}" --passes=1 \
  --hpr_json="$OUT/train_speed_gpu.json" --peers="$PEERS" \
  --peers-python="$PEERS_PY" --device="$device" --batch_sizes="$BATCHES" \
  --timeout="$PEER_TIMEOUT" --out_dir="$OUT" | tee "$OUT/gpu_sitting.md"
say "done; results in $OUT"
