r"""Training speed of the notebook's models in another framework (one entry).

  python benchmarks/peers/run.py --framework torch-eager --model convlstm
  python benchmarks/peers/run.py --framework tf_keras --model lrcn \
      --batch_sizes 4,32 --steps 20 --warmup 3 --json /tmp/peer.json

Runs in the peers' environment (benchmarks/peers/requirements.txt), not
hpr's; `benchmarks/sitting.py` starts one process per framework and model.
For each batch size: the framework's training step (forward, loss,
backward, Adam at 1e-3) on random float32 clips of 20x64x64x3 and 4
classes, timed like hpr's benchmarks/train_speed.py (median and 10th-90th
percentile of --steps steps after --warmup; the first step on its own).

Frameworks: tf_keras (Keras 2 on TensorFlow, `train_on_batch`),
torch-eager (PyTorch) and torch-compile (the same module through
`torch.compile`, default mode, static shapes). PyTorch runs on CUDA where
it sees a GPU (`--device`); there cuDNN picks its algorithms
(`cudnn.benchmark`, as XLA autotunes) and float32 matmuls and convolutions
may use TF32 (`--tf32 on`, JAX's default precision on GPUs).

Prints the entry's numbers as JSON on the last line of stdout.
"""

import argparse
import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from peers import common  # noqa: E402

FRAMEWORKS = {
  'tf_keras': 'tf_keras (Keras 2 / TF)',
  'torch-eager': 'PyTorch eager',
  'torch-compile': 'PyTorch torch.compile',
}


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


def run_torch(args, compiled: bool) -> dict:
  if compiled and 'TORCHINDUCTOR_CACHE_DIR' not in os.environ:
    # A cold compile unless the caller shares a cache between runs.
    cache = tempfile.mkdtemp(prefix='inductor')
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache
  import torch
  import torch.nn.functional as F

  from peers import torch_models

  device = args.device
  if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
  info = {'torch': torch.__version__, 'compiled': compiled}
  if device == 'cpu':
    torch.set_num_threads(os.cpu_count())
    info['threads'] = torch.get_num_threads()
  else:
    tf32 = args.tf32 == 'on'
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    info.update(
      tf32=tf32,
      cudnn_benchmark=True,
      device_name=torch.cuda.get_device_name(),
      cuda=torch.version.cuda,
    )
  torch.manual_seed(0)
  net = torch_models.build(args.model).to(device)
  trainable = [p for p in net.parameters() if p.requires_grad]
  optimizer = torch.optim.Adam(trainable, lr=1e-3)
  forward = torch.compile(net, dynamic=False) if compiled else net
  net.train()
  out = {
    'params': torch_models.trainable_params(net),
    'device': device,
    'info': info,
    'train': {},
  }
  for batch_size in args.batch_sizes:
    clips, labels, _ = common.random_batch(batch_size, channels_first=True)
    x = torch.from_numpy(clips).to(device)
    y = torch.from_numpy(labels).to(device)

    def step(x=x, y=y):
      optimizer.zero_grad(set_to_none=True)
      loss = F.cross_entropy(forward(x), y)
      loss.backward()
      optimizer.step()
      return loss.item()  # Waits for the device.

    out['train'][str(batch_size)] = common.time_steps(
      step, args.warmup, args.steps
    )
    _log_entry(args, batch_size, out['train'][str(batch_size)], out)
  return out


def run_tf_keras(args) -> dict:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  import tf_keras

  from peers import keras_models

  tf_keras.utils.set_random_seed(0)
  net = keras_models.build(tf_keras, args.model)
  gpus = tf.config.list_physical_devices('GPU')
  out = {
    'params': int(net.count_params()),
    'device': 'gpu' if gpus else 'cpu',
    'info': {
      'tensorflow': tf.__version__,
      'tf_keras': tf_keras.__version__,
      'intra_op_threads': tf.config.threading.get_intra_op_parallelism_threads(),
      'inter_op_threads': tf.config.threading.get_inter_op_parallelism_threads(),
    },
    'train': {},
  }
  for batch_size in args.batch_sizes:
    clips, _, onehot = common.random_batch(batch_size)
    x, y = tf.constant(clips), tf.constant(onehot)
    # train_on_batch returns the loss as a number: it waits for the step.
    out['train'][str(batch_size)] = common.time_steps(
      lambda x=x, y=y: net.train_on_batch(x, y), args.warmup, args.steps
    )
    _log_entry(args, batch_size, out['train'][str(batch_size)], out)
  return out


def _log_entry(args, batch_size: int, timing: dict, out: dict) -> None:
  """Logs a batch size's timing; saves what is measured so far to --json
  (a sitting keeps it if a later batch size runs out of time)."""
  timing['clips_per_s'] = batch_size / timing['median_s']
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(_described(args, out), f, indent=1)
  log(
    f'{args.framework}/{args.model} b{batch_size}: '
    f'{timing["clips_per_s"]:.1f} clips/s, first step '
    f'{timing["first_step_s"]:.1f} s, others used '
    f'{timing["others_cores_mean"]:.2f} cores'
  )


def _described(args, out: dict) -> dict:
  return {
    **out,
    'framework': args.framework,
    'label': FRAMEWORKS[args.framework],
    'model': args.model,
    'python': platform.python_version(),
    'wall_s': time.perf_counter() - T_START,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--framework', required=True, choices=tuple(FRAMEWORKS))
  parser.add_argument('--model', required=True, choices=common.MODELS)
  parser.add_argument('--batch_sizes', default='4,32')
  parser.add_argument('--steps', type=int, default=20, help='timed steps')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument(
    '--device', default='auto', choices=('auto', 'cpu', 'cuda')
  )
  parser.add_argument(
    '--tf32',
    default='on',
    choices=('on', 'off'),
    help='PyTorch on CUDA: TF32 for float32 matmuls and convolutions',
  )
  parser.add_argument(
    '--json', help='also write the numbers here (after each batch size)'
  )
  args = parser.parse_args()
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(',')]
  if args.framework == 'tf_keras':
    out = run_tf_keras(args)
  else:
    out = run_torch(args, compiled=args.framework == 'torch-compile')
  out = _described(args, out)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
