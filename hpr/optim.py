"""Optimizer and learning-rate schedule from the config."""

import ml_collections
import optax


def learning_rate_schedule(
  opt: ml_collections.ConfigDict, *, steps_per_epoch: int, num_epochs: int
) -> optax.Schedule:
  """'constant', or linear warm-up then cosine decay to 0 over the run."""
  if opt.schedule == 'constant':
    return optax.constant_schedule(opt.learning_rate)
  total = max(1, steps_per_epoch * num_epochs)
  warmup = min(int(opt.warmup_epochs * steps_per_epoch), total - 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=opt.learning_rate,
    warmup_steps=warmup,
    decay_steps=total,
  )


def make_optimizer(
  opt: ml_collections.ConfigDict, *, steps_per_epoch: int, num_epochs: int
) -> optax.GradientTransformation:
  """Adam (the notebook's), AdamW or SGD with momentum, optionally clipped.

  Args:
    opt: `config.optimizer`.
    steps_per_epoch: training steps per epoch (for the schedule).
    num_epochs: planned epochs (for the schedule).
  """
  lr = learning_rate_schedule(
    opt, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs
  )
  if opt.name == 'adam':
    tx = optax.adam(lr)
  elif opt.name == 'adamw':
    tx = optax.adamw(lr, weight_decay=opt.weight_decay)
  elif opt.name == 'sgd':
    tx = optax.sgd(lr, momentum=opt.momentum)
  else:
    raise ValueError(f'unknown optimizer {opt.name!r}')
  if opt.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx
