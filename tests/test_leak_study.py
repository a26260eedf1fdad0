"""experiments/leak_study: its paired bootstrap and table (the study itself
trains 6 runs; its measured result is in the experiment's README)."""

import numpy as np

from experiments.leak_study import run


def _runs(accuracies: dict[tuple[str, int], float], n: int = 200) -> list:
  """Runs whose per-video correctness has the given accuracies."""
  rng = np.random.default_rng(1)
  out = []
  for (split, seed), acc in accuracies.items():
    correct = np.zeros(n, bool)
    correct[rng.permutation(n)[: round(acc * n)]] = True
    out.append(
      {
        'model': 'lrcn',
        'split': split,
        'seed': seed,
        'accuracy': acc,
        'count': n,
        'leaked_test_videos': n if split == 'random_clips' else 0,
        'correct': ''.join('1' if c else '0' for c in correct),
      }
    )
  return out


def test_bootstrap_interval_holds_a_real_gap_and_excludes_zero():
  runs = _runs({
    ('random_clips', 0): 0.8, ('groups', 0): 0.5,
    ('random_clips', 1): 0.7, ('groups', 1): 0.45,
    ('random_clips', 2): 0.75, ('groups', 2): 0.5,
  })  # fmt: skip
  summary = run.bootstrap(runs, 'lrcn', [0, 1, 2])
  assert np.allclose(summary['per_seed_difference'], [0.3, 0.25, 0.25])
  assert summary['mean_difference'] == np.mean([0.3, 0.25, 0.25])
  low, high = summary['ci95']
  assert 0 < low < summary['mean_difference'] < high
  assert run.bootstrap(runs, 'lrcn', [0, 1, 2]) == summary  # Seeded.
  table = run.table(runs, [summary])
  assert '| lrcn | 1 | 0.700 | 200/200 | 0.450 | 0/200 | +0.250 |' in table


def test_bootstrap_interval_of_equal_arms_holds_zero():
  runs = _runs({
    ('random_clips', 0): 0.6, ('groups', 0): 0.6,
    ('random_clips', 1): 0.55, ('groups', 1): 0.55,
    ('random_clips', 2): 0.6, ('groups', 2): 0.6,
  })  # fmt: skip
  summary = run.bootstrap(runs, 'lrcn', [0, 1, 2])
  low, high = summary['ci95']
  assert summary['mean_difference'] == 0
  assert low < 0 < high
