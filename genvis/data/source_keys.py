"""config.data keys that only one data source reads.

Such a key, set while `config.data.source` names another source, would be ignored without a
word (a run meant for a text file trains on the embedded corpus; a folder of photos is never
read), so it is an error naming the key and how to pick its source. Only keys whose default,
"", means "not set" can be told apart from their defaults this way.
"""

from genvis.errors import UserError


def check(data, owners: dict[str, tuple[str, str]]):
  """`data`: config.data (or a dict of its settings); `owners`: key -> (the source that reads
  it, how a config picks that source, e.g. "the data=file variant")."""
  source = data["source"]
  for key, (owner, how) in owners.items():
    value = data.get(key, "")  # absent from configs that have no such source
    if value and source != owner:
      raise UserError(f"config.data.{key}={value!r} is read only by the {owner!r} source, but "
                      f"config.data.source={source!r}: pick it with {how} or "
                      f"--config.data.source={owner}, or leave config.data.{key} empty")
