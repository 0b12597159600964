"""The one exception type for a user's mistake.

A `UserError` carries a one-line message that names the config key, file or shape that is
wrong and what was expected. `genvis.main` prints it as a single line and exits with status 2,
instead of a long traceback.
"""


class UserError(Exception):
  """A mistake in a config, a path or an input, with a one-line explanation."""


def one_line(error: Exception) -> str:
  """An exception from a library (Orbax, safetensors, torch) as one short line, to quote in a
  UserError."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
