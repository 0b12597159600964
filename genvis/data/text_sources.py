"""Where training text comes from: the embedded corpus, a UTF-8 file, or a tfds dataset.

`config.data.source` picks one:
- "embedded": the documentation every CPython ships (`pydoc_data.topics`, ~465 k characters),
  so the default configs run offline on any machine;
- "file": any UTF-8 text file, `config.data.path`;
- "tfds": a tfds text dataset (`tiny_shakespeare`, `lm1b`, ...), already prepared in
  `config.data.tfds_data_dir`, its string feature `config.data.tfds_text_key`; nothing is
  downloaded;
- "icl": synthetic in-context-learning episodes (genvis/data/icl_corpus.py), generated from
  `config.data.icl_seed`, for the few-shot evaluation of genvis/eval.

Embedded and file text are split by position: the first (1 - val_fraction) for training, the
rest for validation (nanoGPT's Shakespeare split with val_fraction=0.1). tfds datasets use
their own splits.
"""

import os

from genvis.data import source_keys
from genvis.errors import UserError

# Keys only one source reads (genvis/data/source_keys.py).
SOURCE_ONLY_KEYS = {"path": ("file", "the data=file variant"),
                    "tfds_data_dir": ("tfds", "the data=shakespeare variant")}


def embedded_corpus() -> str:
  """The CPython documentation topics, in a fixed (sorted-key) order."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


def read_text_file(path: str) -> str:
  if not path:
    raise UserError("config.data.path is empty; set it to a UTF-8 text file")
  if not os.path.isfile(path):
    raise UserError(f"config.data.path={path!r}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise UserError(f"config.data.path={path!r} is not UTF-8 text ({e.reason} at byte "
                    f"{e.start})") from None


def split_by_position(text: str, val_fraction: float) -> tuple[str, str]:
  if not 0.0 < val_fraction < 1.0:
    raise UserError(f"config.data.val_fraction={val_fraction} must be in (0, 1)")
  cut = int(len(text) * (1.0 - val_fraction))
  return text[:cut], text[cut:]


def load_text_splits(data_config) -> tuple[str, str]:
  """(train_text, val_text) for `config.data`."""
  source = data_config.source
  source_keys.check(data_config, SOURCE_ONLY_KEYS)
  if source == "embedded":
    return split_by_position(embedded_corpus(), data_config.val_fraction)
  if source == "file":
    return split_by_position(read_text_file(data_config.path), data_config.val_fraction)
  if source == "tfds":
    from genvis.data.tfds_text import load_tfds_text  # pylint: disable=import-outside-toplevel
    # .get: the config.json of a run from before tfds_text_key existed lacks it.
    load = lambda split: load_tfds_text(
        data_config.tfds_name, split, data_dir=data_config.tfds_data_dir or None,
        text_key=data_config.get("tfds_text_key", "text"),
        max_examples=data_config.tfds_max_examples or None)
    return load(data_config.tfds_train_split), load(data_config.tfds_val_split)
  if source == "icl":
    from genvis.data.icl_corpus import load_icl_splits  # pylint: disable=import-outside-toplevel
    return load_icl_splits(data_config)
  raise UserError(f"config.data.source={source!r}: expected 'embedded', 'file', 'tfds' or "
                  "'icl'")

