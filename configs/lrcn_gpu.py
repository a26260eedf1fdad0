"""The default LRCN experiment for accelerators (GPUs, TPUs): larger
batches, bfloat16 compute.

  pip install -e '.[cuda]'
  python -m hpr.main --config configs/lrcn_gpu.py --workdir /tmp/hpr/lrcn_gpu

The same command uses every GPU the process sees; for several hosts (SLURM,
a TPU VM slice) see docs/launching.md. The global batch of 64 must divide
by the number of devices (1, 2, 4, 8, 16, 32 or 64). The learning rate is
the default's scaled by sqrt(64 / 8), a common starting point for Adam, not
a tuned value. The model computes in bfloat16 (model.dtype); parameters,
optimizer state, loss, metrics and checkpoints stay float32, so the run
resumes and evaluates like a float32 one; --config.model.dtype=float32
turns it off. On a CPU bfloat16 runs the slower reference kernels: use
configs/default.py there.

Result: not measured yet; no GPU or TPU was available where this was
written, so neither its accuracy nor its speed is known.
"""

import math

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'lrcn'
  base = config.training.batch_size  # The default's 8.
  config.training.batch_size = 64
  config.eval.batch_size = 256
  config.optimizer.learning_rate *= math.sqrt(config.training.batch_size / base)
  config.model.dtype = 'bfloat16'
  return config
