"""Directories a run makes, removed again if it fails before using them.

A training that stops at a user mistake (a wrong video folder, a leaky
split) should not leave an empty workdir or empty TFDS dataset folders
behind, which would look like a run or a dataset. Only directories that did
not exist when the run started, and that are still empty when it fails, are
removed (deepest first, with `os.rmdir`, which never removes anything with
content); whatever existed before is never touched.
"""

import contextlib
import fcntl
import functools
import inspect
import os
from collections.abc import Callable, Iterable, Iterator

# A failed training's new workdir holds nothing but its lock file, free
# again once the run has failed.
from hpr.workdir import LOCK_FILE


def missing(paths: Iterable[str]) -> list[str]:
  """The directories of `paths` and their parents that do not exist yet,
  deepest first."""
  found = set()
  for path in paths:
    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.lexists(path):
      found.add(path)
      parent = os.path.dirname(path)
      if parent == path:
        break
      path = parent
  return sorted(found, key=lambda p: (-p.count(os.sep), p))


def remove_empty(directories: Iterable[str]) -> list[str]:
  """Removes those of `directories` that are empty (or hold only a free
  lock file), deepest first; returns the ones removed."""
  removed = []
  for path in sorted(set(directories), key=lambda p: -p.count(os.sep)):
    try:
      if os.listdir(path) == [LOCK_FILE]:
        _remove_free_lock(os.path.join(path, LOCK_FILE))
      os.rmdir(path)  # Fails, and keeps it, unless it is empty.
    except OSError:
      continue
    removed.append(path)
  return removed


def _remove_free_lock(path: str) -> None:
  """Deletes a lock file that no process holds (taking it first, so that a
  run that has just locked it keeps its lock and its workdir)."""
  fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.remove(path)
  finally:
    os.close(fd)


@contextlib.contextmanager
def removed_on_failure(*paths: str) -> Iterator[None]:
  """On an exception inside the block, removes the directories among
  `paths` and their parents that the block created and left empty."""
  new = missing(paths)
  try:
    yield
  except BaseException:
    remove_empty(new)
    raise


def remove_on_failure(argument: str) -> Callable:
  """Decorator: the directory given as `argument` of the function (and
  its parents) is removed if the call fails, made it and left it empty."""

  def decorate(function: Callable) -> Callable:
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
      path = signature.bind(*args, **kwargs).arguments[argument]
      with removed_on_failure(path):
        return function(*args, **kwargs)

    return wrapper

  return decorate
