"""Errors that reach the user as one line, without a traceback."""


class UserError(Exception):
  """A problem the user can fix: bad input, a wrong path, a bad checkpoint.

  Entry points print `hpr: <label>: <message>` and exit with `exit_code`.
  """

  exit_code = 1
  label = 'error'


class ConfigError(UserError):
  """An invalid config key or value."""

  exit_code = 2


class Interrupted(UserError):
  """A run stopped by SIGTERM or SIGINT after saving a checkpoint.

  Exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT),
  as a process killed by it would, so schedulers still see a preemption;
  running the same command again resumes.
  """

  label = 'stopped'

  def __init__(self, message: str, *, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum
