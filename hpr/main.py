r"""hpr's entry point: train (and resume) or evaluate an experiment.

  python -m hpr.main --config configs/default.py --workdir /tmp/hpr/default \
      [--config.training.batch_size=8] [--mode=evaluate]
  python -m hpr.main --workdir /tmp/hpr/default --mode=evaluate [--step=N]

Running the same command again resumes from the workdir's latest checkpoint.
`--mode=evaluate` without --config uses the workdir's config.json.
User mistakes (a bad config key or value, a missing file, a checkpoint of
another model) end with one line `hpr: error: ...` and a non-zero exit code.
Several processes (hosts, SLURM tasks, a TPU VM slice) run the same command
with --coordinator_address, --num_processes and --process_id, or what their
launcher sets; see docs/launching.md (hpr.launch defines those flags).
"""

import os

# Quiet TensorFlow's C++ start-up chatter; must be set before TF loads.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from hpr import launch, malloc_tuning  # noqa: E402
from hpr import workdir as workdir_lib  # noqa: E402
from hpr.cli import fail  # noqa: E402
from hpr.errors import ConfigError, UserError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (a Python file with get_config()); '
  'override keys with --config.key=value.', lock_config=True)  # fmt: skip
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, '
                    'TensorBoard events and reports; reused to resume.')  # fmt: skip
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'],
                  'train: train (or resume), then test the best checkpoint. '
                  'evaluate: test a checkpoint of the workdir (writes '
                  'WORKDIR/eval).')  # fmt: skip
flags.DEFINE_integer('step', None, 'With --mode=evaluate: the checkpoint '
                     'step to evaluate (default: the best).')  # fmt: skip


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(ConfigError(f'unexpected arguments: {" ".join(argv[1:])}'))
  if not FLAGS.workdir:
    fail(ConfigError('--workdir is required'))
  if FLAGS.config is None and FLAGS.mode == 'train':
    fail(ConfigError('--config is required to train'))
  logging.get_absl_handler().addFilter(launch.QuietLibraries())
  # Late: --help and flag errors answer without loading JAX or TF.
  from hpr import evaluate, parallel, train

  try:
    config = FLAGS.config or workdir_lib.load_config(FLAGS.workdir)
    launch.setup(config)
    if FLAGS.mode == 'train':
      result = train.train_and_evaluate(config, FLAGS.workdir)
      if parallel.is_main_process():
        _plot(FLAGS.workdir)
    else:
      result = evaluate.evaluate(config, FLAGS.workdir, step=FLAGS.step)
      logging.info('report: %s/eval/report.json', FLAGS.workdir)
  except UserError as e:
    fail(e)
  logging.info('done: %s', FLAGS.workdir)
  print(f'test accuracy: {result["accuracy"]:.4f} '
        f'({result["count"]} videos, loss {result["loss"]:.4f})')  # fmt: skip


def _plot(workdir: str) -> None:
  """The run's figures (hpr.tools.plots); a failure only logs a warning."""
  try:
    # Late: matplotlib loads only once a run has finished.
    from hpr.tools import plots

    logging.info('plots: %s', ', '.join(plots.plot_workdir(workdir)))
  except Exception as e:  # Plots must never fail a finished run.
    logging.warning('could not draw the plots of %s: %s', workdir, e)


def run() -> None:
  """`python -m hpr.main` and the `hpr-train` command."""
  # Restarts with glibc malloc settings that save XLA:CPU's steps their
  # page faults (hpr.malloc_tuning; HPR_MALLOC_TUNING=0 turns it off).
  malloc_tuning.reexec()
  app.run(main, flags_parser=launch.parse_flags)


def run_evaluate() -> None:
  """The `hpr-evaluate` command: `hpr.main` with --mode=evaluate."""
  FLAGS.set_default('mode', 'evaluate')
  run()


if __name__ == '__main__':
  run()
