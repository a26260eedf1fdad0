r"""Trains the ConvLSTM encoder-forecaster on moving digits and compares it
with the copy-last-frame and mean-frame baselines on held-out sequences.

  python -m experiments.next_frame.train --steps 800 --batch_size 16 \
      --out experiments/next_frame/out

Writes to --out: results.json (per-frame MSE and BCE of the model and the
baselines on the test set, the arguments, machine, date and wall time),
predictions.png (inputs, truth and prediction for a few test sequences) and
train_log.jsonl (the training loss).

Training sequences are drawn fresh for every step from `--seed`; the
validation and test sets come from fixed seeds, so every run is scored on
the same test sequences.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

TEST_SEED = 1_000_001
VALIDATION_SEED = 1_000_002
# The copy-last and mean-frame baselines predict some pixels as exactly 0 or
# 1; their BCE is scored with the probabilities clipped to [eps, 1 - eps],
# eps the one of these with the lowest BCE on the validation set.
BASELINE_EPS = (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='python -m experiments.next_frame.train',
    description=__doc__.split('\n\n')[0],
  )
  add = parser.add_argument
  add('--steps', type=int, default=800, help='training steps')
  add('--batch_size', type=int, default=16)
  add('--out', default='experiments/next_frame/out', help='output folder')
  add('--seed', type=int, default=0, help='weights and training data')
  add('--size', type=int, default=32, help='frame height and width')
  add('--scale', type=int, default=2, help='digit size: 7x6 pixels * scale')
  add('--num_glyphs', type=int, default=2, help='digits per sequence')
  add(
    '--speed',
    type=float,
    nargs=2,
    default=(1.0, 2.0),
    help='range of the digit speed, pixels per frame',
  )
  add('--num_inputs', type=int, default=10, help='frames in')
  add('--num_future', type=int, default=10, help='frames out')
  add('--patch', type=int, default=4, help='side of the patches (Shi et al.)')
  add(
    '--features',
    type=lambda s: tuple(int(f) for f in s.split(',')),
    default=(32, 32),
    help='ConvLSTM channels per layer, comma-separated',
  )
  add('--kernel_size', type=int, default=3)
  add('--learning_rate', type=float, default=2e-3)
  add('--num_test', type=int, default=256, help='test sequences')
  add('--num_validation', type=int, default=64, help='validation sequences')
  add('--log_every', type=int, default=50)
  add('--num_shown', type=int, default=3, help='test sequences in the PNG')
  args = parser.parse_args(argv)
  if args.steps < 1 or args.batch_size < 1:
    parser.error('--steps and --batch_size must be positive')
  if args.size % args.patch:
    parser.error(f'--size {args.size} is not a multiple of --patch')
  if 7 * args.scale > args.size:
    parser.error(f'digits of --scale {args.scale} do not fit --size')
  if args.num_inputs < 1 or args.num_future < 1:
    parser.error('--num_inputs and --num_future must be positive')
  return args


def make_step_fns():
  """The jitted train step and prediction (imported late: JAX is slow to
  import and the argument errors should not wait for it)."""
  import jax
  import optax
  from flax import nnx

  @nnx.jit
  def train_step(model, optimizer, inputs, targets):
    def loss_fn(model):
      logits = model(inputs, targets.shape[1])
      return optax.sigmoid_binary_cross_entropy(logits, targets).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  @nnx.jit(static_argnums=2)
  def predict(model, inputs, num_future):
    return jax.nn.sigmoid(model(inputs, num_future))

  return train_step, predict


def predict_all(predict, model, inputs, num_future, batch_size):
  """Probabilities for all sequences, in batches of batch_size."""
  out = []
  for i in range(0, len(inputs), batch_size):
    out.append(
      np.asarray(predict(model, inputs[i : i + batch_size], num_future))
    )
  return np.concatenate(out)


def best_eps(prob, target) -> float:
  from experiments.next_frame import data

  scores = [data.per_frame_bce(prob, target, e).mean() for e in BASELINE_EPS]
  return BASELINE_EPS[int(np.argmin(scores))]


def evaluate(prob, test, validation, num_inputs):
  """Per-frame MSE and BCE of the model's probabilities and the baselines."""
  from experiments.next_frame import data

  inputs, targets = data.split(test, num_inputs)
  val_inputs, val_targets = data.split(validation, num_inputs)
  num_future = targets.shape[1]
  rows = {'ConvLSTM encoder-forecaster': (prob, 1e-7)}
  for name, fn in (
    ('copy last frame', data.copy_last_frame),
    ('mean of input frames', data.mean_frame),
    (
      'blank frame (all zeros)',
      lambda x, n: np.zeros_like(x[:, :1]).repeat(n, 1),
    ),
  ):
    eps = best_eps(fn(val_inputs, num_future), val_targets)
    rows[name] = (fn(inputs, num_future), eps)
  results = {}
  for name, (pred, eps) in rows.items():
    mse = data.per_frame_mse(pred, targets)
    bce = data.per_frame_bce(pred, targets, eps)
    results[name] = {
      'mse': float(mse.mean()),
      'bce': float(bce.mean()),
      'mse_per_frame': [float(v) for v in mse],
      'bce_per_frame': [float(v) for v in bce],
      'bce_eps': eps,
    }
  entropy = data.per_frame_bce(targets, targets)
  results['targets (BCE floor: their own entropy)'] = {
    'mse': 0.0,
    'bce': float(entropy.mean()),
    'mse_per_frame': [0.0] * num_future,
    'bce_per_frame': [float(v) for v in entropy],
    'bce_eps': 1e-7,
  }
  return results


def plot(path, test, prob, num_inputs, num_shown):
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  inputs = test[:num_shown, :num_inputs, ..., 0]
  targets = test[:num_shown, num_inputs:, ..., 0]
  preds = prob[:num_shown, ..., 0]
  cols = max(inputs.shape[1], targets.shape[1])
  rows = 3 * len(inputs)
  fig, axes = plt.subplots(
    rows, cols, figsize=(cols * 0.9, rows * 0.95), squeeze=False
  )
  for ax in axes.flat:
    ax.axis('off')
  for n in range(len(inputs)):
    for r, (label, frames) in enumerate(
      (('input', inputs[n]), ('truth', targets[n]), ('predicted', preds[n]))
    ):
      row = 3 * n + r
      for t, frame in enumerate(frames):
        axes[row, t].imshow(frame, cmap='gray', vmin=0.0, vmax=1.0)
      axes[row, 0].text(
        -0.1,
        0.5,
        f'#{n} {label}',
        transform=axes[row, 0].transAxes,
        ha='right',
        va='center',
        fontsize=8,
      )
  fig.suptitle(
    f'{inputs.shape[1]} input frames (t = 1..{inputs.shape[1]}); truth and '
    f'prediction for t = {inputs.shape[1] + 1}..'
    f'{inputs.shape[1] + targets.shape[1]}',
    fontsize=9,
  )
  fig.tight_layout(rect=(0.06, 0, 1, 0.97))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def table(results) -> str:
  """Markdown table: mean and per-frame MSE and BCE of every row."""
  num_future = len(next(iter(results.values()))['mse_per_frame'])
  shown = sorted({0, num_future // 2 - 1, num_future - 1})
  head = ['predictor', 'MSE', 'BCE'] + [f'MSE t+{t + 1}' for t in shown]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name, r in results.items():
    cells = [name, f'{r["mse"]:.4f}', f'{r["bce"]:.4f}']
    cells += [f'{r["mse_per_frame"][t]:.4f}' for t in shown]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  start = time.time()
  import jax
  import optax
  from flax import nnx

  from experiments.next_frame import data, model
  from hpr.models import count_params

  os.makedirs(args.out, exist_ok=True)
  num_frames = args.num_inputs + args.num_future

  def generate(rng, n):
    return data.moving_glyphs(
      rng,
      n,
      num_frames=num_frames,
      size=args.size,
      num_glyphs=args.num_glyphs,
      scale=args.scale,
      speed=tuple(args.speed),
    )

  test = generate(np.random.default_rng(TEST_SEED), args.num_test)
  validation = generate(
    np.random.default_rng(VALIDATION_SEED), args.num_validation
  )
  train_rng = np.random.default_rng(args.seed)

  net = model.EncoderForecaster(
    patch=args.patch,
    features=args.features,
    kernel_size=(args.kernel_size, args.kernel_size),
    rngs=nnx.Rngs(args.seed),
  )
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), optax.adam(args.learning_rate)
  )
  optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)
  train_step, predict = make_step_fns()

  losses = []
  train_start = time.time()
  with open(os.path.join(args.out, 'train_log.jsonl'), 'w') as log:
    for step in range(1, args.steps + 1):
      inputs, targets = data.split(
        generate(train_rng, args.batch_size), args.num_inputs
      )
      loss = float(train_step(net, optimizer, inputs, targets))
      losses.append(loss)
      if step % args.log_every == 0 or step in (1, args.steps):
        elapsed = time.time() - train_start
        record = {'step': step, 'loss': loss, 'seconds': round(elapsed, 1)}
        log.write(json.dumps(record) + '\n')
        log.flush()
        print(json.dumps(record), flush=True)
  train_seconds = time.time() - train_start

  test_inputs, _ = data.split(test, args.num_inputs)
  prob = predict_all(
    predict, net, test_inputs, args.num_future, args.batch_size
  )
  results = evaluate(prob, test, validation, args.num_inputs)
  plot(
    os.path.join(args.out, 'predictions.png'),
    test,
    prob,
    args.num_inputs,
    args.num_shown,
  )
  summary = {
    'command': 'python -m experiments.next_frame.train '
    + ' '.join(sys.argv[1:] if argv is None else argv),
    'args': vars(args),
    'date_utc': datetime.datetime.now(datetime.UTC).isoformat(
      timespec='seconds'
    ),
    'machine': {
      'platform': platform.platform(),
      'cpu_count': os.cpu_count(),
      'jax_device': str(jax.devices()[0].device_kind),
      'jax': jax.__version__,
    },
    'num_params': count_params(net),
    'train_seconds': round(train_seconds, 1),
    'wall_seconds': round(time.time() - start, 1),
    'first_loss': losses[0],
    'last_losses_mean': float(np.mean(losses[-min(50, len(losses)) :])),
    'test': results,
  }
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  print(table(results))
  print(
    f'trained {args.steps} steps in {train_seconds:.0f} s; '
    f'wall {summary["wall_seconds"]:.0f} s; wrote {args.out}'
  )
  return summary


if __name__ == '__main__':
  main()
