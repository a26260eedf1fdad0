"""glibc malloc settings that suit XLA:CPU, applied by restarting the process.

XLA:CPU allocates a training step's large temporaries with malloc on every
step. With glibc's defaults each one comes from fresh pages (allocations
over the mmap threshold are mmap'd and unmapped again; heaps of the worker
threads' arenas are deleted or trimmed once free), so every step pays a
page fault per 4 KiB it touches: 99,041 minor faults (~390 MiB) per
training step of the seed ConvLSTM at batch 32 on two CPU devices, 19,653
per step of the seed LRCN. Keeping freed memory in the process (no mmap, no
trimming) and backing the heap with transparent huge pages brings that to
886 and 7, and the training steps ran 5-14% faster in 6 of 8 interleaved
pairs on a 2-core AMD EPYC, within that machine's noise in the others
(benchmarks/ARCHIVE.md, sitting G). The cost: the process keeps its peak
heap until it exits.

glibc reads these settings (GLIBC_TUNABLES) only when a process starts, so
`reexec()` starts the interpreter again, with the same command line and
the tunables added to its environment. `python -m hpr.main` does so; the
training benchmark starts its workers with `environ()`. Set
HPR_MALLOC_TUNING=0 to run with glibc's defaults; on other C libraries and
platforms nothing changes.
"""

import os
import platform
import sys

# hugetlb=1: malloc asks for transparent huge pages (madvise), where the
# kernel allows them; mmap_max=0: no allocation is mmap'd on its own;
# trim_threshold: freed memory at the top of a heap is never given back.
TUNABLES = (
  'glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0'
  ':glibc.malloc.trim_threshold=1099511627776'
)
DISABLE_VARIABLE = 'HPR_MALLOC_TUNING'


def _glibc_linux() -> bool:
  return sys.platform == 'linux' and platform.libc_ver()[0] == 'glibc'


def enabled(environ=None) -> bool:
  """Whether the tunables apply here: glibc on Linux, and not turned off
  with HPR_MALLOC_TUNING=0."""
  environ = os.environ if environ is None else environ
  if environ.get(DISABLE_VARIABLE, '1').strip().lower() in ('0', 'false'):
    return False
  return _glibc_linux()


def environ(base=None) -> dict[str, str]:
  """A copy of `base` (default os.environ) with hpr's tunables added to
  GLIBC_TUNABLES (after any already there) where they apply, and taken out
  where they do not (turned off in a process that inherited them)."""
  env = dict(os.environ if base is None else base)
  current = env.get('GLIBC_TUNABLES', '')
  if not enabled(env):
    if TUNABLES in current:
      rest = [t for t in current.replace(TUNABLES, '').split(':') if t]
      if rest:
        env['GLIBC_TUNABLES'] = ':'.join(rest)
      else:
        del env['GLIBC_TUNABLES']
  elif TUNABLES not in current:
    env['GLIBC_TUNABLES'] = f'{current}:{TUNABLES}' if current else TUNABLES
  return env


def describe(environ=None) -> str:
  """Whether this process runs with the tunables, for the log: 'on', or
  'off' with the reason where there is one."""
  environ = os.environ if environ is None else environ
  if TUNABLES in environ.get('GLIBC_TUNABLES', ''):
    return 'on'
  if not _glibc_linux():
    return 'off (not glibc on Linux)'
  if not enabled(environ):
    return f'off ({DISABLE_VARIABLE}={environ[DISABLE_VARIABLE]})'
  return 'off'


def reexec() -> None:
  """Restarts this interpreter with `environ()` if that changes anything;
  returns where it does not (already set, turned off, not glibc).

  Call it first thing in a script's `__main__` block: the process is
  replaced, so nothing done before it survives.
  """
  env = environ()
  if env.get('GLIBC_TUNABLES') == os.environ.get('GLIBC_TUNABLES'):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
