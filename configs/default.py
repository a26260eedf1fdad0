"""Default experiment: LRCN on the built-in synthetic_actions dataset.

  python -m hpr.main --config configs/default.py --workdir /tmp/hpr/default

The schema (every key hpr understands, its default, rule and comment) ships
inside the package as hpr/schema.py; this file is its default experiment,
which study configs start from (`config = default.get_config()`).
"""

from hpr.schema import get_config  # noqa: F401
