"""Errors that reach the user as one line, without a traceback."""


class UserError(Exception):
  """A problem the user can fix: bad input, a wrong path, a bad checkpoint.

  Entry points print `hpr: error: <message>` and exit with `exit_code`.
  """

  exit_code = 1


class ConfigError(UserError):
  """An invalid config key or value."""

  exit_code = 2
