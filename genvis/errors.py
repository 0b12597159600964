"""The one exception type for a user's mistake.

A `UserError` carries a one-line message that names the config key, file or shape that is
wrong and what was expected. `genvis.main` prints it as a single line and exits with status 2,
instead of a long traceback.
"""


class UserError(Exception):
  """A mistake in a config, a path or an input, with a one-line explanation."""
